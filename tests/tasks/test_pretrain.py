"""The pretraining task end to end on a fixture dataset, composed from the real configs."""

from pathlib import Path

import lightning as L
import pytest
import torch

from semmae.cli.pretrain import run

TINY = [
    "backbone.embed_dim=32",
    "backbone.depth=2",
    "backbone.num_heads=2",
    "backbone.decoder_embed_dim=16",
    "backbone.decoder_depth=1",
    "backbone.decoder_num_heads=2",
    "dataset.batch_size=32",
    "dataset.eval_batch_size=64",
]


def test_fast_dev_run(compose_cfg, fmnist_root, tmp_path):
    cfg = compose_cfg("pretrain", ["debug=fast_dev_run", f"dataset.root={fmnist_root}", *TINY])
    metrics = run(cfg)
    assert "val/online_probe_acc" in metrics and 0.0 <= metrics["val/online_probe_acc"] <= 1.0
    assert metrics["val/loss"] > 0
    assert (Path(cfg.paths.output_dir) / "results.json").is_file()


class CaptureOptimizerState(L.Callback):
    """Added through the config (+callbacks.capture._target_=...); keeps what it saw in CaptureOptimizerState.seen."""

    seen = None

    def on_train_start(self, trainer, pl_module):
        CaptureOptimizerState.seen = self
        opt = trainer.optimizers[0]
        self.step = trainer.global_step
        self.state = {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state_dict()["state"].items()}
        self.lr = opt.param_groups[0]["lr"]
        self.probe_lr = opt.param_groups[-1]["lr"]  # the online probe: the last group of the one optimiser


def test_save_and_resume_continue_at_same_step_with_same_optimizer_state(compose_cfg, fmnist_root, tmp_path):
    common = [
        f"dataset.root={fmnist_root}",
        *TINY,
        "logger=csv",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "callbacks.reconstruction.num_images=2",
    ]
    first = compose_cfg("pretrain", [*common, "trainer.max_epochs=1"], tmp_path / "first")
    run(first)
    ckpt_path = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert ckpt_path.is_file() and (tmp_path / "first" / "checkpoints" / "epoch_000.ckpt").is_file()
    assert (tmp_path / "first" / "figures" / "reconstruction_epoch000.png").is_file()
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["semmae"]["model"]["embed_dim"] == 32

    second = compose_cfg(
        "pretrain",
        [
            *common,
            "trainer.max_epochs=2",
            f"ckpt_path={ckpt_path}",
            f"+callbacks.capture._target_={__name__}.CaptureOptimizerState",
        ],
        tmp_path / "second",
    )
    run(second)
    capture = CaptureOptimizerState.seen
    assert capture.step == 3
    saved = ckpt["optimizer_states"][0]["state"]
    assert saved.keys() == capture.state.keys()
    for k in saved:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(saved[k][name], capture.state[k][name])
    assert capture.lr == pytest.approx(ckpt["optimizer_states"][0]["param_groups"][0]["lr"])
    probe_group = ckpt["optimizer_states"][0]["param_groups"][-1]
    assert probe_group["clip"] is False and probe_group["params"]  # the probe's state is restored with the rest
    for k in probe_group["params"]:
        assert torch.equal(saved[k]["exp_avg"], capture.state[k]["exp_avg"])
    assert capture.probe_lr == pytest.approx(probe_group["lr"])
    resumed = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 6 and resumed["epoch"] == 1


def test_training_reduces_loss(compose_cfg, fmnist_root, tmp_path):
    cfg = compose_cfg(
        "pretrain",
        [
            f"dataset.root={fmnist_root}",
            *TINY,
            "logger=csv",
            "callbacks=none",
            "trainer.max_epochs=5",
            "model.optim.blr=1e-2",
            "model.optim.warmup_epochs=0.5",
        ],
    )
    run(cfg)
    import csv

    rows = list(csv.DictReader(open(next((tmp_path / "run" / "csv").rglob("metrics.csv")))))
    losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(losses) == 5
    assert losses[-1] < 0.8 * losses[0], losses


def test_masks_are_reproducible_and_differ_by_rank_and_step():
    from semmae.masking import RandomMasking
    from semmae.masking.generator import StepGenerator

    gens, masking = StepGenerator(0), RandomMasking(0.75)
    x = torch.zeros(4, 1, 32, 32)

    def ids(*parts):
        return masking(x, (8, 8), gens(x.device, *parts)).ids_keep

    assert torch.equal(ids(0, 0, 0, 5), ids(0, 0, 0, 5))
    assert not torch.equal(ids(0, 0, 0, 5), ids(0, 1, 0, 5))  # another rank
    assert not torch.equal(ids(0, 0, 0, 5), ids(0, 0, 0, 6))  # another step


class InspectTrainingBatches(L.Callback):
    """Keeps what the training step received: augmented images plus the probe's un-augmented view."""

    seen: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        InspectTrainingBatches.seen.append(
            (trainer.current_epoch, batch["index"].clone(), batch["image"].clone(), batch.get("image_plain"))
        )


def test_training_batches_are_augmented_and_reshuffled_every_epoch(compose_cfg, fmnist_root):
    InspectTrainingBatches.seen = []
    cfg = compose_cfg(
        "pretrain",
        [
            f"dataset.root={fmnist_root}",
            *TINY,
            "logger=none",
            "callbacks=none",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            f"+callbacks.inspect._target_={__name__}.InspectTrainingBatches",
        ],
    )
    run(cfg)
    seen = InspectTrainingBatches.seen
    assert [s[0] for s in seen] == [0, 0, 1, 1]
    for _, _, image, plain in seen:
        assert plain is not None and plain.shape == image.shape
        assert not torch.allclose(image, plain)  # random resized crop + flip ran on the training view
    assert not torch.equal(seen[0][1], seen[2][1])  # epoch 1 draws a new permutation
