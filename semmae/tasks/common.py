"""What the tasks share below their base class (semmae.tasks.base): effective batch and steps per epoch from the
trainer, the check of a settings node, top-1 / top-5 accuracy metrics, and the un-padded part of an evaluation
batch."""

from __future__ import annotations

import difflib
import math
from typing import Any, Mapping

import torch
import torchmetrics
from torch import nn

from semmae.errors import ConfigError


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
