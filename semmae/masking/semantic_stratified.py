"""Stratified semantic masking with a curriculum (docs/masking.md#semantic_stratified): early in training every region
shows a contiguous piece of about (1 - mask_ratio) of its size, so every semantic part is present while the visible
set stays spread over the image; late in training whole regions are revealed as in `semantic`.

Regions and the random part are semantic's (the same segmenters, the same draws). Per region, with probability
lambda = (1 + cos(pi p)) / 2, p the training progress in [0, 1] (batch["progress"], set by PretrainTask.make_mask;
0 when absent), the region is *stratified*: its patches are ordered by geodesic distance from a seed patch drawn
uniformly in it (semmae.masking.regions.grow_distance; ties by noise) and its first ceil((1 - mask_ratio) x size)
patches, its quota, score in [-0.5, 0) by the share of the region before them (t = place / size), so they come
before every whole region and trimming the budget cuts every region's piece back to about the same share.
Otherwise the region is *whole*: semantic's score, its rank in a random order plus the seed distance in [0, 1).
Patches of stratified regions beyond their quota come last. The sum of the quotas is at least n_keep, so at p = 0
(every region stratified, random_fraction = 0) the visible patches are exactly the first ~(n_keep / N) share of every
region's growth order: every region shows a contiguous piece when there are at most n_keep regions. At p = 1
(lambda = 0) the scores are semantic's, drawn from the same generator in the same order: the same mask.
"""

from __future__ import annotations

import math

import torch

from semmae.masking.base import batch_progress
from semmae.masking.regions import (
    grow_distance,
    random_subset,
    rank_in_region,
    region_seeds,
    region_sizes,
    seed_distance,
)
from semmae.masking.semantic import SemanticMasking, SemanticPlan


def cosine_share(progress: float) -> float:
    """lambda = (1 + cos(pi p)) / 2: the probability that a region is stratified at progress p (1 at p = 0, 0 at 1)."""
    p = min(1.0, max(0.0, float(progress)))
    return 0.5 * (1.0 + math.cos(math.pi * p))


class SemanticStratifiedMasking(SemanticMasking):
    name = "semantic_stratified"
    uses_progress = True

    def plan(self, images, grid_size, generator, batch=None) -> SemanticPlan:
        b = images.shape[0]
        n = grid_size[0] * grid_size[1]
        dev = images.device
        regions = self.regions(images, grid_size, generator, batch)
        n_random = int(round(self.random_fraction * self.n_keep(n)))
        random_part = random_subset(b, n, n_random, dev, generator)
        # whole regions: semantic's draws in semantic's order (so p = 1 gives semantic's mask)
        ranks = self.ranks(images, regions, grid_size, generator)
        seeds = region_seeds(regions, generator)
        whole = ranks.float() + seed_distance(regions, grid_size, None, seeds=seeds)
        # stratified regions: each region's quota, grown from the same seed
        share = cosine_share(batch_progress(batch))
        stratified = torch.rand(b, n, device=dev, generator=generator).gather(1, regions) < share
        grow = grow_distance(regions, seeds, grid_size) + 0.5 * torch.rand(b, n, device=dev, generator=generator)
        size = region_sizes(regions)
        place = rank_in_region(regions, grow).float()
        in_quota = place < torch.ceil((1.0 - self.mask_ratio) * size)
        tie = (0.5 / n**2) * torch.rand(b, n, device=dev, generator=generator)  # < the gap between unequal shares
        quota = 0.5 * (place / size + tie) - 0.5  # [-0.5, 0)
        beyond = (n + 2.0) + place / size
        semantic = torch.where(stratified, torch.where(in_quota, quota, beyond), whole)
        scores = torch.where(random_part, torch.full_like(semantic, -1.0), semantic)
        return SemanticPlan(regions=regions, random_part=random_part, scores=scores)
