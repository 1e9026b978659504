"""Semantic masking's flat_last option: flat regions (uniform background) are found, ranked after every textured
region, and so stay hidden in the semantic part while there is content left to show; off, they are shown too."""

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from semmae.masking import SemanticMasking
from semmae.masking.base import keep_lowest, num_keep
from semmae.masking.semantic import flat_regions


def object_on_background(b: int, size: int, patch: int, generator: torch.Generator):
    """Noise-textured rectangles of random size on a constant background, patch-aligned.
    -> (images [B, 1, size*patch, size*patch], object mask per patch [B, N], segment map per patch [B, size, size])."""
    rows = torch.arange(size)
    r0, c0 = torch.randint(0, size, (2, b), generator=generator)
    r1 = r0 + 1 + (torch.rand(b, generator=generator) * (size - r0)).long()
    c1 = c0 + 1 + (torch.rand(b, generator=generator) * (size - c0)).long()
    inside = ((rows >= r0[:, None]) & (rows < r1[:, None]))[:, :, None] & (
        (rows >= c0[:, None]) & (rows < c1[:, None])
    )[:, None, :]  # [B, h, w]
    pix = inside.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]
    images = torch.where(pix, torch.randn(b, 1, size * patch, size * patch, generator=generator), torch.tensor(0.3))
    return images, inside.flatten(1), inside.long()


def test_flat_regions_are_the_uniform_ones():
    g = torch.Generator().manual_seed(0)
    images, obj, segments = object_on_background(32, 8, 4, g)
    regions = SemanticMasking(segmenter="given").regions(images, (8, 8), g, {"segments": segments})
    flat = flat_regions(images, regions, (8, 8), 0.1)
    assert torch.equal(flat, ~obj)
    constant = torch.full((2, 3, 16, 16), 0.7)
    assert flat_regions(constant, torch.zeros(2, 16, dtype=torch.long), (4, 4), 0.1).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ratio=st.floats(0.1, 0.95), r=st.floats(0.0, 1.0), size=st.integers(2, 10), seed=st.integers(0, 2**31))
def test_flat_regions_are_shown_only_after_all_content(ratio, r, size, seed):
    assume(0 < int(size * size * (1 - ratio)) < size * size)  # else a ConfigError
    g = torch.Generator().manual_seed(seed)
    images, obj, segments = object_on_background(8, size, 2, g)
    strategy = SemanticMasking(ratio, random_fraction=r, segmenter="given", flat_last=True)
    plan = strategy.plan(images, (size, size), g, {"segments": segments})
    visible = ~keep_lowest(plan.scores, num_keep(size * size, ratio)).mask
    semantic = visible & ~plan.random_part
    background_shown = (semantic & ~obj).any(1)
    content_left = (obj & ~visible).any(1)
    assert not torch.any(background_shown & content_left)  # background only once every content patch is visible
    assert torch.all(visible.sum(1) == num_keep(size * size, ratio))


def test_off_background_regions_are_shown_in_random_order():
    g = torch.Generator().manual_seed(1)
    images, obj, segments = object_on_background(256, 8, 4, g)
    batch = {"segments": segments}
    shown = {}
    for flat_last in (False, True):
        s = SemanticMasking(0.75, random_fraction=0.0, segmenter="given", flat_last=flat_last)
        visible = ~s(images, (8, 8), g, batch).mask
        big = obj.sum(1) >= num_keep(64, 0.75)  # the object alone can fill the visible budget
        shown[flat_last] = (visible & ~obj)[big].any(1).float().mean().item()
    assert shown[True] == 0.0 and shown[False] > 0.2, shown
