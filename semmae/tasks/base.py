"""The one base of the task modules (solo-learn's BaseMethod, lightning-hydra-template's configure_optimizers fed by
config): plain settings, the bf16 policy, the checkpoint record, and the one optimiser set-up, which the model.optim
node describes (a conf/optim/*.yaml group: the settings, an `optimizer` node and a `scheduler` node). A task says only
what differs: its parameter groups (param_groups) and its lr rule (lr_key). ClassifierEvaluation adds the
validation and test steps of a classifier."""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from semmae.errors import ConfigError
from semmae.optim import scaled_lr
from semmae.optim.schedule import WarmupDecay
from semmae.tasks.settings import settings
from semmae.utils.hardware import cpu_has_native_bf16

NODES = ("optimizer", "scheduler")  # the model.optim nodes with a _target_; every other key is a setting


def plain(node: Any) -> Any:
    """OmegaConf containers -> Python dicts/lists (Hydra passes DictConfig; checkpoints should hold plain data)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def node_config(node: Any, name: str) -> dict[str, Any]:
    """An optimizer / scheduler node as plain config data ({_target_, _partial_, arguments}). Hydra's recursive
    instantiation of the model hands the task functools.partial objects; the checkpoint keeps the config."""
    if isinstance(node, functools.partial):
        target = f"{node.func.__module__}.{node.func.__qualname__}"
        return {"_target_": target, "_partial_": True, **{k: plain(v) for k, v in node.keywords.items()}}
    if isinstance(node, (Mapping, DictConfig)) and "_target_" in node:
        return dict(plain(node))
    raise ConfigError(f"model.optim.{name} must be a node with a _target_ (see conf/optim/*.yaml), got {node!r}")


def optim_group(name: str) -> dict[str, Any]:
    """conf/optim/<name>.yaml, resolved: the settings of a task built without a config (e.g. in a test)."""
    from semmae.config import config_dir

    return plain(OmegaConf.load(config_dir() / "optim" / f"{name}.yaml"))


def optim_settings(given: Mapping[str, Any], reads: Iterable[str]) -> dict[str, Any]:
    """model.optim as plain data, checked. The nodes take their arguments from the settings of the same name
    (`betas: ${..betas}`); a setting that neither a node nor the task (`reads`) takes, such as a typo'd
    +model.optim.blrr=1, is a ConfigError naming it, and so is a negative or non-numeric rate (settings())."""
    cfg = {k: node_config(v, k) if k in NODES else plain(v) for k, v in dict(given).items()}
    for name in NODES:
        if name not in cfg:
            raise ConfigError(
                f"model.optim.{name} is missing: model.optim is an optim group (conf/optim/*.yaml) "
                "with an optimizer and a scheduler node"
            )
    reads = tuple(reads)
    missing = [key for key in reads if key not in cfg]
    if missing:
        raise ConfigError(
            f"model.optim.{missing[0]} is missing: this task reads it (add it, or choose an optim group that has it)"
        )
    taken = {key for name in NODES for key in cfg[name] if not key.startswith("_")}
    known = {key: value for key, value in cfg.items() if key in {*NODES, *reads, *taken}}
    return settings("model.optim", known, cfg)


def checkpoint_record(task: nn.Module, encoder: nn.Module, kind: str, **extra: Any) -> dict[str, Any]:
    """checkpoint["semmae"] of any task: its kind, the encoder's geometry, and the key prefix under which the
    encoder's weights sit in the task's state dict, so that every checkpoint the project writes loads as an encoder
    by one rule (semmae.models.weights)."""
    prefix = next(name for name, module in task.named_modules() if module is encoder)
    return {"kind": kind, "encoder_prefix": f"{prefix}." if prefix else "", "model": dict(encoder.config), **extra}


def effective_batch(trainer, batch_size: int) -> int:
    """Per-device batch x devices x nodes x gradient accumulation: the batch the lr scaling rule reads."""
    return int(batch_size) * trainer.world_size * trainer.accumulate_grad_batches


def steps_per_epoch(trainer) -> int:
    """Optimiser steps per epoch (after limit_train_batches and gradient accumulation)."""
    total = max(1, int(trainer.estimated_stepping_batches))  # sets up the train loader if it is not yet
    batches = trainer.num_training_batches
    if batches == float("inf"):
        return max(1, math.ceil(total / max(1, trainer.max_epochs or 1)))
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))


def accuracy_metrics(num_classes: int) -> nn.ModuleDict:
    """top1, and top5 where there are at least 5 classes."""
    metrics = {"top1": torchmetrics.Accuracy(task="multiclass", num_classes=num_classes, top_k=1)}
    if num_classes >= 5:
        metrics["top5"] = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes, top_k=5)
    return nn.ModuleDict(metrics)


def valid_part(batch: Mapping[str, Any], *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the padding samples (valid=False) that even out the last evaluation batches across DDP ranks."""
    valid = batch.get("valid")
    if valid is None or bool(valid.all()):
        return tensors
    return tuple(t[valid] for t in tensors)


def bf16_enabled(setting: bool | str, device: torch.device) -> bool:
    """bf16 for a forward whose output only a probe reads: "auto" = on CPUs with native bf16 (faster there,
    docs/speed.md); on GPUs the trainer's bf16 autocast already applies."""
    if setting == "auto":
        return torch.device(device).type == "cpu" and cpu_has_native_bf16()
    return bool(setting)


def as_function(schedule: Callable[[int], float]) -> Callable[[int], float]:
    """LambdaLR keeps a callable object's attributes in its state dict and puts them back on resume (the old run's
    step count with them); a plain function it rebuilds from this run's settings instead."""
    return lambda step: schedule(step)


class ClippedGroups:
    """What Lightning's gradient clipping reads of an optimiser (its param_groups), narrowed to some groups."""

    def __init__(self, optimizer: torch.optim.Optimizer, groups: list[dict]):
        self.param_groups = groups
        self._step_supports_amp_scaling = getattr(optimizer, "_step_supports_amp_scaling", False)


class TaskBase(L.LightningModule, ABC):
    kind = ""  # checkpoint["semmae"]["kind"]
    optim_group = ""  # conf/optim/<optim_group>.yaml: the settings when the task is built without model.optim
    lr_key = "blr"  # "blr": lr = blr x effective batch / 256 (MAE's scaling rule); "lr": the lr as given
    optim_keys: tuple[str, ...] = ()  # the model.optim settings that param_groups reads

    def __init__(self, optim: Mapping[str, Any] | None, batch_size: int | None = None):
        super().__init__()
        self.batch_size = None if batch_size is None else int(batch_size)
        given = optim_group(self.optim_group) if optim is None else optim
        self.optim_cfg = optim_settings(given, (self.lr_key, *self.optim_keys))
        self.make_schedule(total_steps=1, steps_per_epoch=1, peak_lr=1.0)  # a bad setting fails now, not at fit

    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        """Lightning's, with model.optim recorded as the plain settings (checkpoints load with weights_only)."""
        ignore = [ignore] if isinstance(ignore, str) else list(ignore or [])
        super().save_hyperparameters(
            *args, ignore=[*ignore, "optim"], frame=frame or inspect.currentframe().f_back, logger=logger
        )
        self.hparams["optim"] = self.optim_cfg

    def bf16_enabled(self, setting: bool | str) -> bool:
        return bf16_enabled(setting, self.device)

    # --- checkpoints ------------------------------------------------------------------------------------------
    def checkpoint_encoder(self) -> nn.Module:
        return self.encoder

    def checkpoint_fields(self) -> dict[str, Any]:
        """What the task adds to checkpoint["semmae"]."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["semmae"] = checkpoint_record(self, self.checkpoint_encoder(), self.kind, **self.checkpoint_fields())

    # --- optimisation -----------------------------------------------------------------------------------------
    def effective_batch(self) -> int:
        return effective_batch(self.trainer, self.batch_size)

    def peak_lr(self) -> float:
        """The lr of a group with lr_scale 1 at the end of the warmup."""
        if self.lr_key == "blr":
            return scaled_lr(self.optim_cfg["blr"], self.effective_batch())
        return float(self.optim_cfg[self.lr_key])

    def total_steps(self) -> int:
        return max(1, int(self.trainer.estimated_stepping_batches))

    @abstractmethod
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's groups: "params" and "weight_decay", and where they differ "lr_scale" (x the peak lr),
        "lr" (an lr of the group's own instead), "schedule" (its own lr multiplier of the step instead of the
        scheduler node's) and "clip" (False: trainer.gradient_clip_val leaves the group alone)."""

    def make_schedule(self, total_steps: int, steps_per_epoch: int, peak_lr: float) -> WarmupDecay:
        """The scheduler node, completed with the run's step counts and peak lr."""
        build = instantiate(self.optim_cfg["scheduler"], _convert_="all")
        return build(total_steps=total_steps, steps_per_epoch=steps_per_epoch, peak_lr=peak_lr)

    def configure_optimizers(self):
        lr = self.peak_lr()
        groups, schedules = [], []
        for group in self.param_groups():
            group = dict(group)
            schedules.append(group.pop("schedule", None))
            group.setdefault("lr", lr * group.get("lr_scale", 1.0))
            groups.append(group)
        build = instantiate(self.optim_cfg["optimizer"], _convert_="all")
        if build.keywords.get("fused") == "auto":  # fused AdamW kernels on CUDA
            build = functools.partial(build, fused=self.device.type == "cuda")
        optimizer = build(groups, lr=lr)
        total = self.total_steps()
        schedule = self.make_schedule(total, steps_per_epoch(self.trainer), lr)
        scheduler = LambdaLR(optimizer, [as_function(s or schedule) for s in schedules])  # one lambda per group
        self.hparams.update(lr=lr, total_steps=total, warmup_steps_resolved=schedule.warmup_steps)
        if self.lr_key == "blr":
            self.hparams["effective_batch"] = self.effective_batch()
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """trainer.gradient_clip_val clips the groups that do not opt out (clip=False: the online probe, whose loss
        neither needs the clip nor should shrink the model's)."""
        clipped = [g for g in optimizer.param_groups if g.get("clip", True)]
        if len(clipped) < len(optimizer.param_groups):
            optimizer = ClippedGroups(optimizer, clipped)
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )


class ClassifierEvaluation(TaskBase):
    """A classifier's validation and test steps: cross-entropy and top-1 / top-5 over the un-padded samples, reduced
    at epoch end. Creates the metrics (val_loss, test_loss, val_metrics, test_metrics); the task provides
    eval_logits(batch)."""

    def __init__(self, num_classes: int, optim: Mapping[str, Any] | None, batch_size: int | None = None):
        super().__init__(optim, batch_size)
        self.val_loss = torchmetrics.MeanMetric()
        self.test_loss = torchmetrics.MeanMetric()
        self.val_metrics = accuracy_metrics(num_classes)
        self.test_metrics = accuracy_metrics(num_classes)

    @abstractmethod
    def eval_logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits [B, classes] of an evaluation batch."""

    def _evaluate(self, batch: Mapping[str, Any], stage: str) -> None:
        logits, labels = valid_part(batch, self.eval_logits(batch), batch["label"])
        losses = self.val_loss if stage == "val" else self.test_loss
        losses.update(F.cross_entropy(logits, labels), weight=labels.shape[0])
        self.log(f"{stage}/loss", losses, on_step=False, on_epoch=True)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        for name, metric in metrics.items():
            metric.update(logits, labels)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "top1")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")
