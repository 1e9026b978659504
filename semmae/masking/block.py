"""BEiT-style block-wise masking: rectangles of random area and aspect ratio are hidden one after another until the
mask ratio is met.

BEiT draws rectangles in a sequential loop (retrying ones that would overshoot). Here, per image, `num_candidates`
rectangles are drawn at once (area uniform in [min_patches, number to hide], log-aspect uniform in
[log min_aspect, -log min_aspect], position uniform; sides clipped to the grid) and taken in order: a patch's score
falls with the index of the first rectangle that covers it, so keeping the lowest scores hides the earliest
rectangles first. The rectangle during which the count is reached is hidden in part, row by row from its top or
its bottom (still a block); patches no rectangle covers come last, in random order (with the defaults the candidates
cover the required count in all but a vanishing fraction of images). All images at once on the training device, a few
broadcasted comparisons: cheaper than BEiT's loop, also on the CPU, so nothing runs in the data loader (its cost per
batch: docs/masking.md#cost).

As with BEiT, large blocks on a small grid cover the centre far more often than the border: at 8x8 and 75% the
centre patches are visible ~30-40x less often than the corners (semmae-masks reports the per-position min/max)."""

from __future__ import annotations

import math

import torch

from semmae.errors import ConfigError
from semmae.masking.base import MaskingStrategy


class BlockMasking(MaskingStrategy):
    name = "block"

    def __init__(
        self,
        mask_ratio: float = 0.75,
        min_patches: int = 16,
        min_aspect: float = 0.3,
        num_candidates: int = 32,
        visible_count: str = "official",
    ):
        super().__init__(mask_ratio, visible_count)
        if int(min_patches) != min_patches or int(min_patches) < 1:
            raise ConfigError(f"masking.min_patches must be an integer >= 1, got {min_patches}")
        self.min_patches = int(min_patches)
        if not 0.0 < float(min_aspect) <= 1.0:
            raise ConfigError(f"masking.min_aspect must be in (0, 1], got {min_aspect}")
        self.min_aspect = float(min_aspect)
        if int(num_candidates) != num_candidates or int(num_candidates) < 1:
            raise ConfigError(f"masking.num_candidates must be an integer >= 1, got {num_candidates}")
        self.num_candidates = int(num_candidates)

    def params(self):
        return {
            **super().params(),
            "min_patches": self.min_patches,
            "min_aspect": self.min_aspect,
            "num_candidates": self.num_candidates,
        }

    def scores(self, images, grid_size, generator, batch=None) -> torch.Tensor:
        h, w = grid_size
        n = h * w
        b, dev, m = images.shape[0], images.device, self.num_candidates
        n_hide = n - self.n_keep(n)
        lo = float(min(self.min_patches, n_hide))
        u = torch.rand(b, m, 5, device=dev, generator=generator)
        area = lo + (n_hide - lo) * u[..., 0]
        log_aspect = math.log(self.min_aspect) * (2.0 * u[..., 1] - 1.0)
        aspect = torch.exp(log_aspect)
        bh = torch.sqrt(area * aspect).round().clamp(1, h)
        bw = torch.sqrt(area / aspect).round().clamp(1, w)
        top = torch.floor(u[..., 2] * (h - bh + 1))
        left = torch.floor(u[..., 3] * (w - bw + 1))
        rows = torch.arange(h, device=dev, dtype=torch.float32).view(1, 1, h, 1)
        cols = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, 1, w)
        t, l_, hh, ww = (v[..., None, None] for v in (top, left, bh, bw))
        inside = (rows >= t) & (rows < t + hh) & (cols >= l_) & (cols < l_ + ww)  # [B, M, h, w]
        inside = inside.reshape(b, m, n)
        # m - (index of the first rectangle covering the patch), 0 where none does: one weighted max over rectangles
        weights = torch.arange(m, 0, -1, device=dev, dtype=torch.float32).view(1, m, 1)
        cover = (inside * weights).amax(dim=1)
        # Within a rectangle, raster order from its top (or, for a random half of the rectangles, its bottom) decides
        # which part is hidden first, so a partly hidden rectangle is still a block and favours no side.
        raster = (rows * w + cols).reshape(1, n).expand(b, n) / n
        from_bottom = (u[..., 4] < 0.5).gather(1, (m - cover.long()).clamp_max(m - 1))
        raster = torch.where(from_bottom, 1.0 - 1.0 / n - raster, raster)
        noise = torch.rand(b, n, device=dev, generator=generator)
        within = torch.where(cover > 0, raster, noise)
        return cover + 0.5 * (1.0 - within)
