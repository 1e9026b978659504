"""Semantic masking on the model's own features (docs/masking.md#semantic_features): as `semantic` (whole contiguous
regions revealed in random order, plus a random part), but the regions come from k-means on the encoder's patch
features of the full augmented image, split into 4-connected components; random masking for the first `warmup`
share of training, while the features still say little.

The strategy does not reach into the model: the pretraining task runs the encoder on the full augmented image (no
gradient) and passes the patch tokens as batch["features"] [B, N, D] whenever `needs_features(progress)` says so
(PretrainTask.make_mask), sharing that forward with the online probe. The features are the *current* encoder's, not
an EMA copy's: the regions are recomputed every step and only need to follow what the encoder currently separates,
an EMA would add a second set of weights to keep, update and checkpoint, and the shared probe forward reads the
current encoder anyway.

Descriptors: every feature dimension standardised over the image's patches, then scaled to a total variance of 2 (that
of a single-channel image's colour descriptors in color_kmeans), plus pos_weight x the standardised (row, col), so
pos_weight weighs position against content as it does for color_kmeans.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from semmae.errors import DataError
from semmae.masking.base import batch_progress, check_range
from semmae.masking.components import grid_components
from semmae.masking.segmenters import kmeans, standard_positions
from semmae.masking.semantic import SemanticMasking

FEATURE_VARIANCE = 2.0  # total variance of the content part of a descriptor (a grey image's colour descriptors)


def feature_descriptors(features: torch.Tensor, grid_size: tuple[int, int], pos_weight: float) -> torch.Tensor:
    """[B, N, D] patch features -> [B, N, D + 2] k-means descriptors (see the module docstring)."""
    b, n, d = features.shape
    x = features.float()
    var, avg = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
    x = (x - avg) / (var.sqrt() + 1e-3) * math.sqrt(FEATURE_VARIANCE / d)
    pos = standard_positions(grid_size, features.device)
    return torch.cat([x, (pos_weight * pos).expand(b, -1, -1)], dim=2)


class SemanticFeaturesMasking(SemanticMasking):
    name = "semantic_features"
    uses_progress = True

    def __init__(
        self,
        mask_ratio: float = 0.75,
        *,
        warmup: float = 0.1,
        num_regions: int = 8,
        random_fraction: float = 0.25,
        pos_weight: float = 0.25,
        iters: int = 5,
        visible_count: str = "official",
    ):
        super().__init__(
            mask_ratio,
            num_regions=num_regions,
            random_fraction=random_fraction,
            pos_weight=pos_weight,
            iters=iters,
            visible_count=visible_count,
        )
        self.segmenter = "features"
        self.warmup = check_range("masking.warmup", warmup, 0.0, 1.0, closed=True)

    def params(self) -> dict[str, Any]:
        return {
            "mask_ratio": self.mask_ratio,
            "visible_count": self.visible_count,
            "warmup": self.warmup,
            "num_regions": self.num_regions,
            "random_fraction": self.random_fraction,
            "pos_weight": self.pos_weight,
            "iters": self.iters,
        }

    def describe(self) -> str:
        return f"masking={self.name}"

    def data_needs(self):
        return {}  # the features come from the task, not from the data

    def needs_features(self, progress: float) -> bool:
        return float(progress) >= self.warmup

    def regions(self, images, grid_size, generator, batch=None) -> torch.Tensor:
        self.check(grid_size)
        features = None if batch is None else batch.get("features")
        b, n = images.shape[0], grid_size[0] * grid_size[1]
        if features is None:
            raise DataError(
                "masking=semantic_features reads batch['features'] (the encoder's patch tokens of the "
                "full image) after its warm-up, but the batch has none: pretrain with semmae-pretrain, "
                "whose task passes them"
            )
        if features.ndim != 3 or tuple(features.shape[:2]) != (b, n):
            raise DataError(
                f"batch['features'] must be [{b}, {n}, D] for {b} images of {n} patches, got {tuple(features.shape)}"
            )
        clusters = kmeans(
            feature_descriptors(features.to(images.device), grid_size, self.pos_weight),
            self.num_regions,
            self.iters,
            generator,
        )
        return grid_components(clusters, grid_size)

    def scores(self, images, grid_size, generator, batch=None) -> torch.Tensor:
        if not self.needs_features(batch_progress(batch)):  # warm-up: MAE's random masking
            b, n = images.shape[0], grid_size[0] * grid_size[1]
            return torch.rand(b, n, device=images.device, generator=generator)
        return self.plan(images, grid_size, generator, batch).scores
