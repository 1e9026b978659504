"""Per-step linear warmup then half-cosine (or poly) decay to a floor, as a multiplier of the peak lr."""

from __future__ import annotations

import math
from dataclasses import dataclass

from semmae.errors import ConfigError


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier in [min_ratio, 1]: linear from 0 over warmup_steps, then cosine down to min_ratio at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_poly(step: int, warmup_steps: int, total_steps: int, power: float = 1.0, min_ratio: float = 0.0) -> float:
    """Multiplier in [min_ratio, 1]: linear from 0 over warmup_steps, then (1 - progress) ** power down to min_ratio
    at total_steps (mmseg's "poly" policy, used for ADE20K segmentation)."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress) ** power


SCHEDULES = ("cosine", "poly")


@dataclass
class WarmupDecay:
    """The lr multiplier of step s (0-based optimiser steps): linear warmup from 0 over warmup_steps, then cosine or
    poly (power) decay to min_ratio at total_steps."""

    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0
    schedule: str = "cosine"
    power: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"model.optim.schedule={self.schedule}: choose one of {sorted(SCHEDULES)}")

    def __call__(self, step: int) -> float:
        if self.schedule == "poly":
            return warmup_poly(step, self.warmup_steps, self.total_steps, self.power, self.min_ratio)
        return warmup_cosine(step, self.warmup_steps, self.total_steps, self.min_ratio)


def warmup_decay(
    total_steps: int,
    steps_per_epoch: int,
    peak_lr: float,
    warmup_epochs: float = 0.0,
    warmup_steps: int | None = None,
    min_lr: float = 0.0,
    schedule: str = "cosine",
    power: float = 1.0,
) -> WarmupDecay:
    """The schedule in the config's terms (the scheduler node of conf/optim/*.yaml, completed by the task with the
    run's step counts and peak lr): warmup_epochs (fractions allowed) unless warmup_steps is given, and the floor
    min_lr as an absolute lr."""
    warmup = int(warmup_steps) if warmup_steps is not None else int(round(warmup_epochs * steps_per_epoch))
    min_ratio = min_lr / peak_lr if peak_lr > 0 else 0.0
    return WarmupDecay(int(total_steps), warmup, min_ratio, schedule, float(power))
