"""The task base: one configure_optimizers for every task, fed by the model.optim group (conf/optim/*.yaml); the
online probe is one more group of the pretraining optimiser (its own lr and schedule, no weight decay, never
clipped); ClassifierEvaluation creates its metrics."""

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torchmetrics
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader

import semmae
from semmae.cli.pretrain import run
from semmae.models.heads import ProbeHead
from semmae.optim.lars import LARS
from semmae.optim.schedule import warmup_cosine
from semmae.tasks.base import NODES, ClassifierEvaluation, optim_group
from tests.tasks.test_pretrain import TINY

EVAL_TINY = ["ckpt=null", "backbone.embed_dim=32", "backbone.depth=2", "backbone.num_heads=2"]
TASKS = {  # task -> (overrides, optim group, optimiser class)
    "pretrain": (TINY, "adamw_mae_pretrain", torch.optim.AdamW),
    "linprobe": (EVAL_TINY, "lars_probe", LARS),
    "finetune": (EVAL_TINY, "adamw_layer_decay", torch.optim.AdamW),
    "segment": (
        [*EVAL_TINY, "model.segmenter.channels=8", "model.segmenter.aux_channels=8"],
        "adamw_segment",
        torch.optim.AdamW,
    ),
}


def test_one_configure_optimizers_in_the_package():
    root = Path(semmae.__file__).parent
    hits = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.py") if "def configure_optimizers" in p.read_text()
    )
    assert hits == ["tasks/base.py"]


def fake_trainer(steps_per_epoch: int = 5, epochs: int = 2) -> SimpleNamespace:
    """What configure_optimizers reads of a trainer."""
    return SimpleNamespace(
        estimated_stepping_batches=steps_per_epoch * epochs,
        num_training_batches=steps_per_epoch,
        accumulate_grad_batches=1,
        world_size=1,
        max_epochs=epochs,
    )


def settings_only(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in NODES}


@pytest.mark.parametrize("task", list(TASKS))
def test_the_optim_group_composes_for_every_task(compose_cfg, task):
    overrides, group, optimizer_class = TASKS[task]
    cfg = compose_cfg(task, overrides)
    assert cfg.hydra.runtime.choices.optim == group
    model = instantiate(cfg.model)
    assert settings_only(model.optim_cfg) == settings_only(optim_group(group))  # model.optim is the group's file
    model.trainer = fake_trainer()
    out = model.configure_optimizers()
    optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert type(optimizer) is optimizer_class and out["lr_scheduler"]["interval"] == "step"
    assert len(scheduler.lr_lambdas) == len(optimizer.param_groups)  # one lambda per group
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)  # every trainable parameter, once
    peak = model.hparams["lr"]
    for g in optimizer.param_groups:
        if "clip" not in g:  # the online probe's group has its own lr
            assert g["initial_lr"] == pytest.approx(peak * g.get("lr_scale", 1.0))


def test_defaults_are_what_the_yaml_said():
    """The group's file is the one place of the defaults: a task built without model.optim reads it, and where the
    Python copies disagreed with the YAML, the YAML (what users ran) won."""
    from semmae.masking.random import RandomMasking
    from semmae.models.mae import MaskedAutoencoder
    from semmae.tasks.pretrain import PretrainTask

    mae = MaskedAutoencoder(
        img_size=16,
        patch_size=4,
        in_chans=1,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    task = PretrainTask(mae, RandomMasking(0.75), num_classes=10, batch_size=8)
    assert settings_only(task.optim_cfg) == settings_only(optim_group("adamw_mae_pretrain"))
    assert optim_group("adamw_mae_pretrain")["warmup_epochs"] == 0.5
    finetune = optim_group("adamw_layer_decay")
    assert (finetune["blr"], finetune["layer_decay"]) == (2.0e-3, 0.9)


def test_a_bad_schedule_is_refused_when_the_task_is_built(compose_cfg):
    cfg = compose_cfg("segment", [*TASKS["segment"][0], "model.optim.schedule=step"])
    with pytest.raises(Exception, match=r"model.optim.schedule=step: choose one of \['cosine', 'poly'\]"):
        instantiate(cfg.model)


class ProbeGroupWatch(L.Callback):
    """Per optimiser step: the gradients before and after Lightning's clipping, and the groups' settings."""

    seen: list = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # before clipping
        self.pre = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        self.groups = [
            {k: v for k, v in g.items() if k != "params"} | {"ids": [id(p) for p in g["params"]]}
            for g in optimizer.param_groups
        ]
        self.step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # after the step: clipped grads
        post = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        ProbeGroupWatch.seen.append(
            (self.step, self.pre, post, self.groups, len(trainer.optimizers), trainer.estimated_stepping_batches)
        )


def test_probe_is_one_more_group_with_its_own_lr_no_decay_and_no_clipping(compose_cfg, fmnist_root):
    ProbeGroupWatch.seen = []
    cfg = compose_cfg(
        "pretrain",
        [
            f"dataset.root={fmnist_root}",
            *TINY,
            "logger=none",
            "callbacks=none",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1",
            "trainer.gradient_clip_val=1e-6",
            f"+callbacks.watch._target_={__name__}.ProbeGroupWatch",
        ],
    )
    run(cfg)
    assert [s[0] for s in ProbeGroupWatch.seen] == [0, 1, 2]
    for step, pre, post, groups, n_optimizers, total in ProbeGroupWatch.seen:
        assert n_optimizers == 1
        probe = groups[-1]
        assert (probe["weight_decay"], tuple(probe["betas"]), probe["clip"]) == (0.0, (0.9, 0.999), False)
        assert all("clip" not in g for g in groups[:-1])
        # the probe's own schedule, at the step the old hand-stepped optimiser used (global_step before the step)
        assert probe["lr"] == pytest.approx(1e-2 * warmup_cosine(step, 0, total, 0.05))
        assert groups[0]["lr"] == pytest.approx(groups[0]["initial_lr"] * warmup_cosine(step, 2, total))
        probe_names = [n for n in pre if n.startswith("probe.")]
        assert probe_names and all(torch.equal(pre[n], post[n]) for n in probe_names)  # not clipped
        mae = [n for n in pre if n.startswith("mae.")]

        def norm(grads, mae=mae):
            return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(grads[n]) for n in mae]))

        assert norm(pre) > 1e-3 and norm(post) <= 1e-6 * 1.001  # the MAE's gradients were clipped, alone
    run_probe = ProbeGroupWatch.seen[0][3][-1]["ids"]
    assert len(run_probe) == 2  # ProbeHead: linear weight and bias (the BatchNorm has no affine parameters)


class TinyClassifier(ClassifierEvaluation):
    optim_group = "lars_probe"
    optim_keys = ("weight_decay",)

    def __init__(self, num_classes: int):
        super().__init__(num_classes, optim=None, batch_size=4)
        self.linear = nn.Linear(3, num_classes)

    def eval_logits(self, batch):
        return self.linear(batch["x"])

    def param_groups(self):
        return [{"params": list(self.linear.parameters()), "weight_decay": 0.0}]


def test_classifier_evaluation_creates_its_metrics():
    task = TinyClassifier(10)
    assert isinstance(task.val_loss, torchmetrics.MeanMetric) and isinstance(task.test_loss, torchmetrics.MeanMetric)
    assert set(task.val_metrics) == set(task.test_metrics) == {"top1", "top5"}
    assert set(TinyClassifier(3).val_metrics) == {"top1"}  # top-5 needs 5 classes
    torch.manual_seed(0)
    x, labels = torch.randn(12, 3), torch.randint(0, 10, (12,))
    valid = torch.ones(12, dtype=torch.bool)
    valid[-3:] = False  # DDP padding: not counted
    loader = DataLoader([{"x": x[i], "label": labels[i], "valid": valid[i]} for i in range(12)], batch_size=6)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    metrics = trainer.validate(task, dataloaders=loader, verbose=False)[0]
    with torch.no_grad():
        logits = task.linear(x[valid])
    assert metrics["val/top1"] == pytest.approx((logits.argmax(1) == labels[valid]).float().mean().item())
    assert metrics["val/loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels[valid]).item(), rel=1e-5
    )
    assert 0.0 <= metrics["val/top5"] <= 1.0


def test_the_online_probe_is_the_models_probe_head(compose_cfg):
    model = instantiate(compose_cfg("pretrain", TINY).model)
    assert isinstance(model.probe, ProbeHead)
    assert not (Path(semmae.__file__).parent / "tasks" / "online_probe.py").exists()
