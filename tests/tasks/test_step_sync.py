"""The training step must not read device values on the host (each read is a GPU pipeline stall): no .item(),
.tolist(), bool() or float() of tensors from semmae code between logging intervals. On CPU we count such reads;
on a GPU the step of every masking strategy (conf/masking) runs under torch.cuda.set_sync_debug_mode("error"), and
on a CPU the same step is checked to train with each."""

from __future__ import annotations

import contextlib
import traceback

import lightning as L
import pytest
import torch

from semmae.cli.pretrain import run
from tests.conftest import REPO
from tests.tasks.test_pretrain import TINY

READS = ("item", "tolist", "__bool__", "__float__", "__int__")


WATCHED = ("/semmae/", "/torchmetrics/")  # our code, and the metric code it calls every step


@contextlib.contextmanager
def count_host_reads(counter: list):
    """Patch tensor methods that copy a value to the host; record reads asked for directly by semmae or
    torchmetrics code. (torch.optim reads its host-side step counters; those are CPU tensors on a GPU too.)"""
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name):
        original = originals[name]

        def patched(self, *args, **kwargs):
            caller = traceback.extract_stack()[-2]
            if any(w in caller.filename.replace("\\", "/") for w in WATCHED):
                counter.append(f"{name} at {caller.filename}:{caller.lineno}")
            return original(self, *args, **kwargs)

        return patched

    for name in READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


class HostReadProbe(L.Callback):
    """Counts host reads made by semmae code inside training steps that do not log (most steps)."""

    reads: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._reads: list = []
        self._ctx = count_host_reads(self._reads)
        self._ctx.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._ctx.__exit__(None, None, None)
        if (batch_idx + 1) % trainer.log_every_n_steps:
            HostReadProbe.reads.extend(self._reads)


@pytest.mark.parametrize("masking", ["random", "semantic"])
def test_training_step_reads_nothing_back_to_the_host(compose_cfg, fmnist_root, masking):
    HostReadProbe.reads = []
    cfg = compose_cfg(
        "pretrain",
        [
            f"dataset.root={fmnist_root}",
            *TINY,
            f"masking={masking}",
            "logger=none",
            "callbacks=none",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=6",
            "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=4",
            f"+callbacks.probe._target_={__name__}.HostReadProbe",
        ],
    )
    run(cfg)
    assert sorted(set(HostReadProbe.reads)) == []


def test_probe_detects_a_host_read():
    reads: list = []
    with count_host_reads(reads):
        from semmae.optim import scaled_lr  # noqa: F401  (a semmae frame below does the read)

        exec(compile("import torch\ntorch.ones(1).item()", "/x/semmae/fake.py", "exec"))
    assert reads and reads[0].startswith("item")


STRATEGIES = sorted(p.stem for p in (REPO / "conf" / "masking").glob("*.yaml"))  # every masking strategy


def masked_step(task, opt, images, gen, step: int) -> None:
    """One training step as PretrainTask takes it: the strategy's inputs (progress 0.5, so semantic_features uses the
    encoder's features and semantic_stratified its curriculum), the mask, the MAE forward, backward, optimiser."""
    batch = {
        "image": images,
        "label": torch.zeros(len(images), dtype=torch.long, device=images.device),
        "progress": 0.5,
    }
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.is_cuda):
        inputs, _ = task.masking_inputs(batch)
        mask = task.masking(images, task.mae.grid_size, gen.manual_seed(step), inputs)
        loss, _ = task.mae(images, mask)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def tiny_task(compose_cfg, masking: str, device: str, extra: tuple[str, ...] = (), batch: int = 64):
    from hydra.utils import instantiate

    cfg = compose_cfg(
        "pretrain", [f"masking={masking}", "backbone=vit_tiny", "backbone.img_size=32", "backbone.patch_size=4", *extra]
    )
    task = instantiate(cfg.model).to(device)
    opt = torch.optim.AdamW(task.mae.parameters(), lr=1e-4, fused=device == "cuda")
    return task, opt, torch.randn(batch, cfg.dataset.channels, 32, 32, device=device)


@pytest.mark.parametrize("masking", STRATEGIES)
def test_the_gpu_tests_step_trains_with_every_strategy(compose_cfg, masking):
    """The step the GPU test runs under sync-debug mode, here on the CPU: it composes for every strategy and trains."""
    task, opt, images = tiny_task(compose_cfg, masking, "cpu", extra=tuple(TINY[:6]), batch=8)
    before = task.mae.decoder.pred.weight.detach().clone()
    for step in range(2):
        masked_step(task, opt, images, torch.Generator(), step)
    assert not torch.equal(before, task.mae.decoder.pred.weight)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("masking", STRATEGIES)
def test_gpu_step_has_no_synchronisation(compose_cfg, masking):
    task, opt, images = tiny_task(compose_cfg, masking, "cuda")
    gen = torch.Generator(device="cuda")
    for step in range(3):
        torch.cuda.set_sync_debug_mode("error" if step else "default")
        try:
            masked_step(task, opt, images, gen, step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
