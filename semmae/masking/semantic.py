"""Semantic masking (docs/masking.md#semantic-masking): visible patches come in whole, contiguous regions of like
content, while which regions are visible stays random.

1. Over-segment the patch grid into regions: clusters from a segmenter, each split into its 4-connected components
   (semmae.masking.components), so every region is contiguous. Segmenters:
   - `color_kmeans` (default): batched k-means with `num_regions` centres on per-patch colour descriptors + position
     (semmae.masking.segmenters), on the training device;
   - `slic`: scikit-image superpixels (about `num_regions` of them) computed per image in the data loader's workers
     on the augmented image and passed with the batch as batch["segments"]; each patch takes its majority label;
   - `given`: batch["segments"] supplied by the dataset (oracle experiments, e.g. Fashion-MNIST's
     dataset.segments=foreground), at pixel or patch resolution.
2. Random part: round(random_fraction * n_keep) patches, uniformly at random, get the lowest scores.
3. Semantic part: regions are ranked in a random order; a patch's score is its region's rank plus a term in [0, 1)
   that grows with its distance from a random seed patch of the region. Keeping the lowest scores therefore takes
   whole regions in random order, and the one region that does not fit is taken nearest-its-seed first.
   `flat_last` (off by default; ablated in experiments/semantic_vs_random): flat regions, whose patches' pixel std
   averages at most `flat_threshold` x the image's pixel std (uniform background), are ranked after every textured
   region, so the semantic part shows content first and background only when the content runs out; background is
   then seen mostly through the random part. The registers paper's artifacts sit on such low-information patches.

Everything is batched tensor code driven by the step's generator: no per-image Python loop, no host synchronisation
(checked under torch.cuda.set_sync_debug_mode("error") by experiments/bench_masking.py --check-sync).
random_fraction = 1 is random masking (the random part then holds every visible patch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from semmae.errors import ConfigError, DataError
from semmae.masking.base import MaskingStrategy, check_range
from semmae.masking.components import grid_components
from semmae.masking.regions import (  # noqa: F401 (flat_regions, region_ranks, seed_distance: importable from here)
    flat_regions,
    random_subset,
    region_ranks,
    seed_distance,
)
from semmae.masking.segmenters import SlicSegments, color_kmeans_clusters, patch_labels

SEGMENTERS = ("color_kmeans", "slic", "given")


@dataclass(frozen=True)
class SemanticPlan:
    """What semantic masking decided for a batch (also what semmae-masks draws)."""

    regions: torch.Tensor  # [B, N] int64: the smallest patch index of each patch's region (region id)
    random_part: torch.Tensor  # [B, N] bool: the patches drawn by the random part
    scores: torch.Tensor  # [B, N] float: lower = visible first


class SemanticMasking(MaskingStrategy):
    name = "semantic"

    def __init__(
        self,
        mask_ratio: float = 0.75,
        num_regions: int = 8,
        random_fraction: float = 0.25,
        segmenter: str = "color_kmeans",
        pos_weight: float = 0.25,
        iters: int = 5,
        compactness: float = 10.0,
        flat_last: bool = False,
        flat_threshold: float = 0.1,
        visible_count: str = "official",
    ):
        super().__init__(mask_ratio, visible_count)
        if int(num_regions) != num_regions or int(num_regions) < 1:
            raise ConfigError(f"masking.num_regions must be an integer >= 1, got {num_regions}")
        self.num_regions = int(num_regions)
        self.random_fraction = check_range("masking.random_fraction", random_fraction, 0.0, 1.0, closed=True)
        if segmenter not in SEGMENTERS:
            raise ConfigError(f"masking.segmenter must be one of {', '.join(SEGMENTERS)}, got {segmenter!r}")
        self.segmenter = segmenter
        self.pos_weight = float(pos_weight)
        if self.pos_weight < 0:
            raise ConfigError(f"masking.pos_weight must be >= 0, got {pos_weight}")
        if int(iters) != iters or int(iters) < 0:
            raise ConfigError(f"masking.iters must be an integer >= 0, got {iters}")
        self.iters = int(iters)
        self.compactness = float(compactness)
        if self.compactness <= 0:
            raise ConfigError(f"masking.compactness must be > 0, got {compactness}")
        self.flat_last = bool(flat_last)
        self.flat_threshold = check_range("masking.flat_threshold", flat_threshold, 0.0, 1.0, closed=True)

    def params(self) -> dict[str, Any]:
        p = {
            **super().params(),
            "num_regions": self.num_regions,
            "random_fraction": self.random_fraction,
            "segmenter": self.segmenter,
        }
        if self.segmenter == "color_kmeans":
            p.update(pos_weight=self.pos_weight, iters=self.iters)
        elif self.segmenter == "slic":
            p.update(compactness=self.compactness)
        if self.flat_last:
            p.update(flat_last=True, flat_threshold=self.flat_threshold)
        return p

    def describe(self) -> str:
        return f"masking={self.name} masking.segmenter={self.segmenter}"

    def data_needs(self):
        if self.segmenter == "slic":
            return {"segments": SlicSegments(self.num_regions, self.compactness)}
        if self.segmenter == "given":
            return {"segments": None}
        return {}

    def check(self, grid_size: tuple[int, int]) -> None:
        super().check(grid_size)
        n = grid_size[0] * grid_size[1]
        if self.segmenter != "given" and self.num_regions > n:
            raise ConfigError(
                f"masking.num_regions={self.num_regions} is more than the {n} patches of the "
                f"{grid_size[0]}x{grid_size[1]} patch grid: choose at most {n}"
            )

    # --- step 1 -----------------------------------------------------------------------------------------------
    def regions(
        self,
        images: torch.Tensor,
        grid_size: tuple[int, int],
        generator: torch.Generator | None,
        batch: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """[B, N] region id per patch (the smallest patch index of its contiguous region)."""
        self.check(grid_size)
        if self.segmenter == "color_kmeans":
            clusters = color_kmeans_clusters(
                images, grid_size, self.num_regions, self.iters, self.pos_weight, generator
            )
        else:
            segments = None if batch is None else batch.get("segments")
            if segments is None:
                raise DataError(
                    f"masking.segmenter={self.segmenter} reads batch['segments'], but the batch has none: "
                    + (
                        "run through semmae-pretrain, which sets up SLIC in the data loader's workers"
                        if self.segmenter == "slic"
                        else "use a dataset that provides segment maps "
                        "(e.g. dataset.segments=foreground for Fashion-MNIST)"
                    )
                )
            if segments.shape[0] != images.shape[0]:
                raise DataError(f"batch['segments'] has {segments.shape[0]} maps for {images.shape[0]} images")
            try:
                clusters = patch_labels(segments.to(images.device), grid_size)
            except ValueError as exc:
                raise DataError(f"batch['segments']: {exc}") from exc
        return grid_components(clusters, grid_size)

    # --- steps 2 and 3 ----------------------------------------------------------------------------------------
    def plan(
        self,
        images: torch.Tensor,
        grid_size: tuple[int, int],
        generator: torch.Generator | None,
        batch: Mapping[str, Any] | None = None,
    ) -> SemanticPlan:
        b = images.shape[0]
        n = grid_size[0] * grid_size[1]
        regions = self.regions(images, grid_size, generator, batch)
        n_random = int(round(self.random_fraction * self.n_keep(n)))
        random_part = random_subset(b, n, n_random, images.device, generator)
        semantic = self.ranks(images, regions, grid_size, generator).float() + seed_distance(
            regions, grid_size, generator
        )
        scores = torch.where(random_part, torch.full_like(semantic, -1.0), semantic)
        return SemanticPlan(regions=regions, random_part=random_part, scores=scores)

    def ranks(
        self,
        images: torch.Tensor,
        regions: torch.Tensor,
        grid_size: tuple[int, int],
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """[B, N] rank of every patch's region in the order the semantic part reveals them: uniformly random
        (flat regions last with flat_last). semantic_informative draws it weighted by content instead."""
        last = flat_regions(images, regions, grid_size, self.flat_threshold) if self.flat_last else None
        return region_ranks(regions, generator, last)

    def scores(self, images, grid_size, generator, batch=None) -> torch.Tensor:
        return self.plan(images, grid_size, generator, batch).scores
