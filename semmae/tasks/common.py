"""What the evaluation tasks share: effective batch and steps per epoch from the trainer, the per-step warmup +
cosine lr schedule, top-1 / top-5 accuracy metrics, and the un-padded part of an evaluation batch."""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from typing import Any, Mapping

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from semmae.errors import ConfigError
from semmae.optim import warmup_cosine


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


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, trainer, warmup_epochs: float, peak_lr: float,
                            min_lr: float) -> dict[str, Any]:
    """Per-step linear warmup then cosine to min_lr, for every group alike (a group's own lr scale is kept)."""
    total = max(1, int(trainer.estimated_stepping_batches))
    warmup = int(round(warmup_epochs * steps_per_epoch(trainer)))
    min_ratio = min_lr / peak_lr if peak_lr > 0 else 0.0
    sched = LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total, min_ratio))
    return {"scheduler": sched, "interval": "step"}


POSITIVE = ("blr", "lr")  # learning rates
NON_NEGATIVE = ("weight_decay", "min_lr", "warmup_epochs", "warmup_steps", "momentum", "layer_decay", "power",
                "trust_coefficient", "batch_fraction", "aux_weight", "label_smoothing", "mixup_alpha", "cutmix_alpha")


def settings(group: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """A task's settings node (model.optim, model.probe, ...): the defaults updated with what the config gives. A key
    the task does not know (a typo such as +model.optim.blrr=1) and a negative or non-numeric rate are ConfigErrors
    that name the key, instead of a setting silently ignored or a traceback from the optimiser."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        near = difflib.get_close_matches(unknown[0], list(defaults), n=1)
        hint = f"did you mean {group}.{near[0]}? " if near else ""
        raise ConfigError(f"{group}.{unknown[0]} is not a setting of this task: {hint}{group} takes "
                          f"{', '.join(sorted(defaults))}")
    out = {**defaults, **given}
    for key in (*POSITIVE, *NON_NEGATIVE):
        value = out.get(key)
        if key not in given or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{group}.{key} must be a number, got {value!r}")
        if (key in POSITIVE and not value > 0) or value < 0:
            raise ConfigError(f"{group}.{key}={value}: must be {'> 0' if key in POSITIVE else '>= 0'}")
    return out


def checkpoint_record(task: nn.Module, encoder: nn.Module, kind: str, **extra: Any) -> dict[str, Any]:
    """checkpoint["semmae"] of any task: its kind, the encoder's geometry, and the key prefix under which the
    encoder's weights sit in the task's state dict, so that every checkpoint the project writes loads as an encoder
    by one rule (semmae.models.checkpoints)."""
    prefix = next(name for name, module in task.named_modules() if module is encoder)
    return {"kind": kind, "encoder_prefix": f"{prefix}." if prefix else "", "model": dict(encoder.config), **extra}


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


class ClassifierEvaluation(ABC):
    """Validation and test steps of a classification LightningModule: cross-entropy and top-1 / top-5 over the
    un-padded samples, reduced at epoch end. The module provides eval_logits(batch) and the attributes val_loss,
    test_loss (MeanMetric) and val_metrics, test_metrics (accuracy_metrics)."""

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
