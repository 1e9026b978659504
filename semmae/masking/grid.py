"""MAE's regular-grid ablation: keep one patch of every s x s cell (s = 2 at mask_ratio 0.75, as in the MAE paper).

The kept patch sits at the same offset in every cell; the offset is drawn per image from the step's generator.
mask_ratio must be 1 - 1/s^2 for an integer s >= 2 (0.75, 0.889, 0.9375, ...); any other ratio is refused with a
ConfigError, since a regular grid cannot produce it. On a grid whose sides are not multiples of s the pattern holds
one or two rows/columns more or fewer than n_keep; the count is then made exact at random (extra grid patches are
hidden, or random off-grid patches shown). Batched, no Python loop."""

from __future__ import annotations

import math

import torch

from semmae.errors import ConfigError
from semmae.masking.base import MaskingStrategy


class GridMasking(MaskingStrategy):
    name = "grid"

    def __init__(self, mask_ratio: float = 0.75, visible_count: str = "official"):
        super().__init__(mask_ratio, visible_count)
        cell = round(1.0 / math.sqrt(1.0 - self.mask_ratio))
        if cell < 2 or abs(1.0 - 1.0 / cell**2 - self.mask_ratio) > 1e-3:
            raise ConfigError(
                f"masking=grid keeps one patch per s x s cell, so masking.mask_ratio must be 1 - 1/s^2 "
                f"(0.75, 0.889, 0.9375, ...), got {self.mask_ratio:g}; "
                "use masking=random or masking=block for other ratios"
            )
        self.cell = cell

    def params(self):
        return {**super().params(), "cell": self.cell}

    def scores(self, images, grid_size, generator, batch=None) -> torch.Tensor:
        h, w = grid_size
        b, dev, s = images.shape[0], images.device, self.cell
        offset = (torch.rand(b, 2, device=dev, generator=generator) * s).long().clamp_max(s - 1)
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        on_grid = (rows % s == offset[:, 0, None, None]) & (cols % s == offset[:, 1, None, None])
        tie_break = 0.5 * torch.rand(b, h * w, device=dev, generator=generator)
        return (~on_grid).reshape(b, h * w).float() + tie_break
