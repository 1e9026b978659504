"""Per-step linear warmup then half-cosine decay to a floor, as a multiplier of the peak lr."""

from __future__ import annotations

import math


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
