"""semantic_stratified (docs/masking.md#semantic_stratified): at the start of training (p = 0) every region shows a
contiguous piece of about (1 - mask_ratio) of its size; at the end (p = 1) whole regions, as semantic, mask for mask
under the same generator; in between the cosine curriculum; the visible count is exact throughout."""

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from semmae.masking import SemanticMasking, SemanticStratifiedMasking
from semmae.masking.base import keep_lowest, num_keep
from semmae.masking.components import grid_components
from semmae.masking.generator import StepGenerator
from semmae.masking.regions import grow_distance, rank_in_region, region_seeds
from semmae.masking.semantic_stratified import cosine_share
from tests.masking.helpers import painted_images, reference_roots, smooth_images
from tests.masking.test_semantic import partial_regions_in_semantic_part


def test_cosine_share():
    assert cosine_share(0.0) == 1.0 and cosine_share(1.0) == 0.0 and cosine_share(0.5) == pytest.approx(0.5)
    assert cosine_share(-1.0) == 1.0 and cosine_share(2.0) == 0.0
    assert cosine_share(0.25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ratio=st.floats(0.05, 0.95),
    r=st.floats(0.0, 1.0),
    p=st.floats(0.0, 1.0),
    size=st.integers(2, 12),
    b=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_exact_count_and_determinism_at_any_progress(ratio, r, p, size, b, seed):
    assume(0 < int(size * size * (1 - ratio)) < size * size)
    g = torch.Generator().manual_seed(seed)
    images = smooth_images(b, 3, size * 2, g)
    strategy = SemanticStratifiedMasking(ratio, num_regions=min(8, size * size), random_fraction=r)
    gen = StepGenerator(seed)
    batch = {"image": images, "progress": p}
    m = strategy(images, (size, size), gen(images.device, 0, 0, 3, 4), batch)
    assert torch.all((~m.mask).sum(1) == num_keep(size * size, ratio))
    again = strategy(images, (size, size), gen(images.device, 0, 0, 3, 4), batch)
    assert torch.equal(m.mask, again.mask) and torch.equal(m.ids_keep, again.ids_keep)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ratio=st.floats(0.1, 0.95),
    r=st.floats(0.0, 1.0),
    k=st.integers(1, 12),
    size=st.integers(2, 12),
    seed=st.integers(0, 2**31),
)
def test_late_in_training_it_is_semantic_mask_for_mask(ratio, r, k, size, seed):
    assume(0 < int(size * size * (1 - ratio)) < size * size and k <= size * size)
    g = torch.Generator().manual_seed(seed)
    images = smooth_images(4, 3, size * 2, g)
    gen = StepGenerator(seed)
    a = SemanticMasking(ratio, num_regions=k, random_fraction=r)(images, (size, size), gen(images.device, 0, 0, 0, 0))
    strategy = SemanticStratifiedMasking(ratio, num_regions=k, random_fraction=r)
    batch = {"image": images, "progress": 1.0}
    b = strategy(images, (size, size), gen(images.device, 0, 0, 0, 0), batch)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_keep, b.ids_keep)
    partial, _, _ = partial_regions_in_semantic_part(
        strategy, images, (size, size), gen(images.device, 0, 0, 0, 0), batch
    )
    assert torch.all(partial <= 1)  # whole regions, one at most cut by the budget


def visible_pieces(strategy, images, owner, grid, progress, gen):
    """-> (regions, visible [B, N], patches shown per region read at each patch [B, N], connected pieces [B])."""
    batch = {"segments": owner.view(-1, *grid), "progress": progress}
    plan = strategy.plan(images, grid, gen, batch)
    visible = ~keep_lowest(plan.scores, num_keep(grid[0] * grid[1], strategy.mask_ratio)).mask
    shown = torch.zeros(visible.shape).scatter_add_(1, plan.regions, visible.float()).gather(1, plan.regions)
    n = grid[0] * grid[1]
    labels = torch.where(visible, plan.regions, -1 - torch.arange(n))  # hidden patches: a label of their own
    roots = grid_components(labels, grid)
    pieces = ((roots == torch.arange(n)) & visible).sum(1)
    return plan.regions, visible, shown, pieces


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ratio=st.floats(0.3, 0.9), colours=st.integers(2, 6), size=st.integers(4, 12), seed=st.integers(0, 2**31))
def test_early_in_training_every_region_shows_one_contiguous_piece(ratio, colours, size, seed):
    grid = (size, size)
    n = size * size
    n_keep = num_keep(n, ratio)
    g = torch.Generator().manual_seed(seed)
    images, owner = painted_images(8, size, 2, colours, g)
    num_regions = (reference_roots(owner, grid) == torch.arange(n)).sum(1)
    assume(bool((num_regions <= n_keep).all()))
    strategy = SemanticStratifiedMasking(ratio, random_fraction=0.0, segmenter="given")
    regions, visible, shown, pieces = visible_pieces(strategy, images, owner, grid, 0.0, torch.Generator())
    size_of = torch.zeros(visible.shape).scatter_add_(1, regions, torch.ones(visible.shape)).gather(1, regions)
    assert torch.all(shown >= 1)  # every region shows a piece
    assert torch.all(shown <= torch.ceil((1 - ratio) * size_of))  # of at most its quota
    assert torch.equal(pieces, num_regions)  # one 4-connected piece per region
    assert torch.all(visible.sum(1) == n_keep)


def test_the_curriculum_moves_from_pieces_to_whole_regions():
    g = torch.Generator().manual_seed(0)
    images, owner = painted_images(256, 8, 2, 4, g)
    strategy = SemanticStratifiedMasking(0.75, random_fraction=0.0, segmenter="given")
    shares = []
    for p in (0.0, 0.5, 1.0):
        regions, visible, shown, _ = visible_pieces(
            strategy, images, owner, (8, 8), p, torch.Generator().manual_seed(1)
        )
        is_root = regions == torch.arange(64)
        shares.append(((shown > 0) & is_root).sum().item() / is_root.sum().item())  # regions with a visible piece
    assert shares[0] == 1.0 and shares[0] > shares[1] > shares[2], shares


def test_growth_is_geodesic_inside_the_region():
    # a U-shaped region: the seed at one tip, the other tip is near in the plane but far inside the region
    u = torch.tensor([[1, 0, 1], [1, 0, 1], [1, 1, 1]]).view(1, 9)
    regions = grid_components(u, (3, 3))
    seeds = torch.zeros(1, 9, dtype=torch.long)  # patch 0 seeds both regions here (only the U's value is read)
    dist = grow_distance(regions, seeds, (3, 3))
    assert dist[0, [0, 3, 6, 7, 8, 5, 2]].tolist() == [0, 1, 2, 3, 4, 5, 6]
    place = rank_in_region(regions, dist)
    assert place[0, [0, 3, 6, 7, 8, 5, 2]].tolist() == list(range(7))
    s = region_seeds(regions, torch.Generator().manual_seed(0))
    assert torch.equal(s.gather(1, regions), s)  # one seed per region, inside it
    assert torch.equal(regions.gather(1, s), regions)
