"""Content-weighted semantic masking (docs/masking.md#semantic_informative): as `semantic` (whole contiguous regions
revealed, plus a random part), but the regions are drawn without replacement with probability proportional to
content^alpha, content = the region's mean patch pixel std relative to the image's mean patch pixel std
(semmae.masking.regions.region_content, the statistic flat_last thresholds). The draw is the Gumbel top-k trick
on the device (semmae.masking.regions.region_ranks with log_weight = alpha log content), from the step's generator.

alpha = 0 is `semantic`: the same uniform draws in the same order, mapped through a strictly increasing function,
so a fixed generator gives the same mask. Only the normalised share of content matters: dividing every region's
content by one per-image constant leaves the draw unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from semmae.errors import ConfigError
from semmae.masking.base import to_float
from semmae.masking.regions import region_content, region_ranks
from semmae.masking.semantic import SemanticMasking


class SemanticInformativeMasking(SemanticMasking):
    name = "semantic_informative"

    def __init__(self, mask_ratio: float = 0.75, *, alpha: float = 1.0, **semantic: Any):
        """alpha, and semantic masking's own settings (SemanticMasking) but flat_last and flat_threshold: the
        content weight orders the regions itself."""
        refused = sorted({"flat_last", "flat_threshold"} & set(semantic))
        if refused:
            raise TypeError(f"SemanticInformativeMasking takes no {refused[0]}: masking.alpha orders the regions")
        super().__init__(mask_ratio, **semantic)
        self.alpha = to_float("masking.alpha", alpha)
        if not 0.0 <= self.alpha < float("inf"):
            raise ConfigError(f"masking.alpha must be a finite number >= 0, got {alpha}")

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha}

    def ranks(self, images, regions, grid_size, generator) -> torch.Tensor:
        log_weight = self.alpha * torch.log(region_content(images, regions, grid_size))
        return region_ranks(regions, generator, log_weight=log_weight)
