"""Random masking over k x k units of patches (docs/masking.md#random_units): MAE's random masking, but each unit of
k x k neighbouring patches (k = `unit`, 2 by default) is visible or hidden as a whole: contiguity without semantics.

Scores: the units are put in a uniformly random order; a patch's score is its unit's rank plus a uniform tie-break
in [0, 1). Keeping the n_keep lowest therefore takes whole units in random order; when n_keep is not a multiple of
k^2, exactly one unit (the next in the order) is partly visible, a uniformly random subset of n_keep mod k^2 of its
patches, so the count stays exact and every other unit is all visible or all hidden. The unit must divide both
sides of the patch grid, else a ConfigError naming masking.unit. unit = 1 is random masking."""

from __future__ import annotations

import torch

from semmae.errors import ConfigError
from semmae.masking.base import MaskingStrategy


def unit_index(grid_size: tuple[int, int], unit: int, device) -> torch.Tensor:
    """[N] int64: the index of every patch's k x k unit, units in row-major order."""
    h, w = grid_size
    rows = torch.arange(h, device=device).view(h, 1) // unit
    cols = torch.arange(w, device=device).view(1, w) // unit
    return (rows * (w // unit) + cols).reshape(-1)


class RandomUnitsMasking(MaskingStrategy):
    name = "random_units"

    def __init__(self, mask_ratio: float = 0.75, unit: int = 2, visible_count: str = "official"):
        super().__init__(mask_ratio, visible_count)
        if isinstance(unit, bool) or not isinstance(unit, (int, float)) or int(unit) != unit or int(unit) < 1:
            raise ConfigError(f"masking.unit must be an integer >= 1, got {unit!r}")
        self.unit = int(unit)

    def params(self):
        return {**super().params(), "unit": self.unit}

    def check(self, grid_size: tuple[int, int]) -> None:
        super().check(grid_size)
        h, w = grid_size
        if h % self.unit or w % self.unit:
            raise ConfigError(
                f"masking.unit={self.unit} does not divide the {h}x{w} patch grid: choose a unit that "
                f"divides both sides"
            )

    def scores(self, images, grid_size, generator, batch=None) -> torch.Tensor:
        self.check(grid_size)
        h, w = grid_size
        b, dev, k = images.shape[0], images.device, self.unit
        units = (h // k) * (w // k)
        draw = torch.rand(b, units, device=dev, generator=generator)
        unit_rank = torch.argsort(torch.argsort(draw, dim=1), dim=1)  # a uniformly random order of the units
        rank = unit_rank[:, unit_index(grid_size, k, dev)].float()  # [B, N]
        return rank + torch.rand(b, h * w, device=dev, generator=generator)
