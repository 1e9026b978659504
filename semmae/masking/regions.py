"""Region helpers shared by the region-based strategies (semantic, semantic_informative, semantic_stratified).

A region map is [B, N] int64: every patch carries its region's id, the smallest patch index in it (what
semmae.masking.components.grid_components returns). Every helper is batched tensor code driven by the step's
generator: no per-image Python loop, no host synchronisation.

- `region_ranks`: a random order of each image's regions, uniform or weighted (Gumbel top-k keys);
- `region_seeds`, `seed_distance`: a seed patch drawn uniformly in every region, and the Euclidean distance from it;
- `grow_distance`, `rank_in_region`: geodesic (4-neighbour, within the region) distance from the seed, and every
  patch's place in its region's growth order, so that a prefix of that order is a contiguous piece;
- `region_sizes`, `region_mean`, `patch_pixel_std`, `flat_regions`, `region_content`: per-region statistics;
- `random_subset`: a uniformly random subset of fixed size per row.
"""

from __future__ import annotations

import functools
import math

import torch

from semmae.masking.components import grid_edges

CONTENT_FLOOR = 1e-6  # region_content's lower bound: a flat region keeps a tiny but finite weight


def region_ranks(
    regions: torch.Tensor,
    generator: torch.Generator | None,
    last: torch.Tensor | None = None,
    log_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """regions [B, N] (region id = smallest patch index) -> rank of each patch's region [B, N], a random order of
    each image's regions (0 = first).

    Uniform by default. last [B, N] bool (read at each region's root patch): those regions come after all the
    others, in random order among themselves. log_weight [B, N] float (read at the roots, finite): the regions are
    drawn one after the other without replacement with probability proportional to exp(log_weight), by the Gumbel
    top-k trick: key = -log_weight - G with G = -log(E), E = -log(1 - U) ~ Exp(1), sorted ascending. The key is a
    strictly increasing function of the same uniform draw U when log_weight is 0, so log_weight = 0 gives the same
    order as the uniform draw from the same generator. last and log_weight do not combine."""
    b, n = regions.shape
    dev = regions.device
    ar = torch.arange(n, device=dev)
    draw = torch.rand(b, n, device=dev, generator=generator)
    is_root = regions == ar
    if log_weight is not None:
        if last is not None:
            raise ValueError("region_ranks: last and log_weight do not combine")
        exp1 = (-torch.log1p(-draw)).clamp_min(torch.finfo(draw.dtype).tiny)
        key = torch.where(is_root, torch.log(exp1) - log_weight, torch.full_like(draw, math.inf))
    else:
        if last is not None:
            draw = draw + last.to(draw.dtype)  # [0, 1) first, [1, 2) last
        key = torch.where(is_root, draw, torch.full_like(draw, 3.0))  # only the roots compete
    order = torch.argsort(key, dim=1, stable=True)  # the roots first, in key order
    rank_of = torch.empty_like(order).scatter_(1, order, ar.expand(b, n).contiguous())
    return rank_of.gather(1, regions)


@functools.lru_cache(maxsize=64)
def _positions(h: int, w: int, device: str) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).float()  # [N, 2] (row, col)


def region_seeds(regions: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """[B, N] -> [B, N] int64: for every patch, a seed patch of its region, drawn uniformly in the region (the same
    seed for every patch of a region)."""
    b, n = regions.shape
    dev = regions.device
    # One random key per patch, with the patch index in its low digits: the region's smallest key names its seed.
    key = (torch.rand(b, n, device=dev, generator=generator) * 2**20).long() * n + torch.arange(n, device=dev)
    lowest = torch.full_like(key, 2**20 * n).scatter_reduce_(1, regions, key, reduce="amin")
    return lowest.gather(1, regions) % n


def seed_distance(
    regions: torch.Tensor,
    grid_size: tuple[int, int],
    generator: torch.Generator | None,
    seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euclidean distance of every patch from its region's seed patch (drawn by region_seeds unless given), divided
    by the grid's diagonal + 1, so that it lies in [0, 1)."""
    h, w = grid_size
    seed = region_seeds(regions, generator) if seeds is None else seeds
    pos = _positions(h, w, str(regions.device))
    return (pos[seed] - pos).norm(dim=2) / (math.hypot(h, w) + 1.0)


def grow_rounds(grid_size: tuple[int, int]) -> int:
    """Relaxation rounds of grow_distance: h + w, the largest distance within a rectangle of the grid."""
    return int(grid_size[0]) + int(grid_size[1])


def grow_distance(
    regions: torch.Tensor,
    seeds: torch.Tensor,
    grid_size: tuple[int, int],
    rounds: int | None = None,
) -> torch.Tensor:
    """[B, N] float: the geodesic distance (4-neighbour steps that stay inside the region) of every patch from its
    region's seed, by a fixed number of Bellman-Ford rounds over the grid's edges (grow_rounds by default: exact for
    every patch within h + w steps of its seed, which covers all but snake- or spiral-shaped regions). A patch not
    reached in time gets rounds + 1 + its Euclidean distance from the seed, so it comes after every reached patch.

    A prefix of the patches of a region sorted by this distance (ties in any order) is 4-connected wherever it
    contains only reached patches: every reached patch at distance d > 0 has a neighbour in the region at d - 1."""
    b, n = regions.shape
    h, w = grid_size
    dev = regions.device
    rounds = grow_rounds(grid_size) if rounds is None else int(rounds)
    ar = torch.arange(n, device=dev)
    dist = torch.where(seeds == ar, 0.0, math.inf).expand(b, n).contiguous()
    src, dst = grid_edges(grid_size, dev)
    if src.numel():
        src_b, dst_b = src.expand(b, -1), dst.expand(b, -1)
        same = regions.gather(1, src_b) == regions.gather(1, dst_b)
        for _ in range(rounds):
            du, dv = dist.gather(1, src_b), dist.gather(1, dst_b)
            dist = dist.scatter_reduce(1, dst_b, torch.where(same, du + 1.0, math.inf), reduce="amin")
            dist = dist.scatter_reduce_(1, src_b, torch.where(same, dv + 1.0, math.inf), reduce="amin")
    pos = _positions(h, w, str(dev))
    euclid = (pos[seeds] - pos).norm(dim=2)
    return torch.where(torch.isfinite(dist), dist, rounds + 1.0 + euclid)


def rank_in_region(regions: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """[B, N] int64: every patch's place (0, 1, ...) in its region's patches sorted by key (ties by patch index)."""
    b, n = regions.shape
    ar = torch.arange(n, device=regions.device).expand(b, n).contiguous()
    by_key = torch.argsort(key, dim=1, stable=True)
    order = by_key.gather(1, torch.argsort(regions.gather(1, by_key), dim=1, stable=True))  # by region, then key
    place = torch.empty_like(order).scatter_(1, order, ar)  # position of each patch in that order
    start = torch.full_like(place, n).scatter_reduce_(1, regions, place, reduce="amin")  # each region's first
    return place - start.gather(1, regions)


def region_sizes(regions: torch.Tensor) -> torch.Tensor:
    """[B, N] -> [B, N] float: the number of patches in every patch's region."""
    ones = torch.ones(regions.shape, device=regions.device)
    return torch.zeros_like(ones).scatter_add_(1, regions, ones).gather(1, regions)


def region_mean(values: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """values [B, N] -> [B, N]: the mean of values over every patch's region."""
    total = torch.zeros_like(values).scatter_add_(1, regions, values)
    count = torch.zeros_like(values).scatter_add_(1, regions, torch.ones_like(values))
    return (total / count.clamp_min(1.0)).gather(1, regions)


def patch_pixel_std(images: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, N]: the std of every patch's pixels, averaged over the channels."""
    b, c, height, width = images.shape
    h, w = grid_size
    x = images.float().reshape(b, c, h, height // h, w, width // w)
    return x.std(dim=(3, 5), unbiased=False).mean(1).flatten(1)


def flat_regions(
    images: torch.Tensor,
    regions: torch.Tensor,
    grid_size: tuple[int, int],
    threshold: float,
) -> torch.Tensor:
    """[B, N] bool: the patch's region is flat, i.e. the pixel std within its patches, averaged over the region and
    the channels, is at most `threshold` x the image's pixel std (scale- and shift-invariant; a constant image is
    all flat)."""
    image_std = images.float().flatten(2).std(dim=2, unbiased=False).mean(1, keepdim=True)  # [B, 1]
    return region_mean(patch_pixel_std(images, grid_size), regions) <= threshold * image_std


def region_content(images: torch.Tensor, regions: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """[B, N] float: the content of every patch's region, its mean patch pixel std (as for flat_regions) divided by
    the image's mean patch pixel std, floored at CONTENT_FLOOR (a constant image: every region at the floor)."""
    patch_std = patch_pixel_std(images, grid_size)
    scale = patch_std.mean(1, keepdim=True).clamp_min(1e-12)
    return (region_mean(patch_std, regions) / scale).clamp_min(CONTENT_FLOOR)


def random_subset(b: int, n: int, count: int, device, generator: torch.Generator | None) -> torch.Tensor:
    """[B, N] bool with exactly `count` True per row, every subset equally likely."""
    u = torch.rand(b, n, device=device, generator=generator)
    rank = torch.argsort(torch.argsort(u, dim=1), dim=1)
    return rank < count
