"""semantic_informative (docs/masking.md#semantic_informative): whole regions drawn without replacement with
probability proportional to content^alpha; alpha = 0 is semantic, mask for mask under the same generator."""

import itertools

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from semmae.errors import ConfigError
from semmae.masking import SemanticInformativeMasking, SemanticMasking
from semmae.masking.base import num_keep
from semmae.masking.generator import StepGenerator
from semmae.masking.regions import region_content
from tests.masking.helpers import smooth_images


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ratio=st.floats(0.1, 0.95),
    r=st.floats(0.0, 1.0),
    k=st.integers(1, 12),
    size=st.integers(2, 12),
    segmenter=st.sampled_from(["color_kmeans", "given"]),
    seed=st.integers(0, 2**31),
)
def test_alpha_zero_is_semantic_mask_for_mask(ratio, r, k, size, segmenter, seed):
    assume(0 < int(size * size * (1 - ratio)) < size * size and k <= size * size)  # else a ConfigError
    g = torch.Generator().manual_seed(seed)
    images = smooth_images(4, 3, size * 2, g)
    batch = {"image": images, "segments": torch.randint(0, 3, (4, size, size), generator=g)}
    gen = StepGenerator(seed)
    kwargs = dict(num_regions=k, random_fraction=r, segmenter=segmenter)
    a = SemanticMasking(ratio, **kwargs)(images, (size, size), gen(images.device, 0, 0, 0, 0), batch)
    b = SemanticInformativeMasking(ratio, alpha=0.0, **kwargs)(
        images, (size, size), gen(images.device, 0, 0, 0, 0), batch
    )
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_keep, b.ids_keep)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ratio=st.floats(0.1, 0.95),
    alpha=st.floats(0.0, 8.0),
    size=st.integers(2, 12),
    flat=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_exact_count_and_determinism(ratio, alpha, size, flat, seed):
    assume(0 < int(size * size * (1 - ratio)) < size * size)
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(3, 1, size * 2, size * 2) if flat else smooth_images(3, 1, size * 2, g)
    strategy = SemanticInformativeMasking(ratio, num_regions=min(8, size * size), alpha=alpha)
    gen = StepGenerator(seed)
    m = strategy(images, (size, size), gen(images.device, 0, 0, 1, 2))
    assert torch.all((~m.mask).sum(1) == num_keep(size * size, ratio))
    again = strategy(images, (size, size), gen(images.device, 0, 0, 1, 2))
    assert torch.equal(m.mask, again.mask) and torch.equal(m.ids_keep, again.ids_keep)


def three_textured_regions(b: int, amplitudes=(1.0, 2.0, 4.0)):
    """A 6x6 grid of 2x2 patches in three 2-row bands; band j is a pixel checkerboard of +-amplitudes[j], so every
    patch of it has pixel std exactly amplitudes[j]. -> (images [B, 1, 12, 12], segments [B, 6, 6])."""
    checker = (torch.arange(12).view(12, 1) + torch.arange(12).view(1, 12)) % 2 * 2.0 - 1.0
    amp = torch.tensor(amplitudes).repeat_interleave(4).view(12, 1)
    images = (checker * amp).expand(b, 1, 12, 12).contiguous()
    segments = torch.arange(3).repeat_interleave(2).view(6, 1).expand(b, 6, 6).contiguous()
    return images, segments


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_region_order_is_a_weighted_draw_without_replacement(alpha):
    b = 6000
    images, segments = three_textured_regions(b)
    strategy = SemanticInformativeMasking(0.75, segmenter="given", alpha=alpha)
    regions = strategy.regions(images, (6, 6), None, {"segments": segments})
    content = region_content(images, regions, (6, 6))[0, [0, 12, 24]]
    assert torch.allclose(content / content[0], torch.tensor([1.0, 2.0, 4.0]))
    ranks = strategy.ranks(images, regions, (6, 6), torch.Generator().manual_seed(0))[:, [0, 12, 24]]  # [B, 3]
    w = [a**alpha for a in (1.0, 2.0, 4.0)]
    orders = list(itertools.permutations(range(3)))
    observed = [int((ranks == torch.tensor(o)).all(1).sum()) for o in orders]
    # P(rank vector o) for the draw without replacement: the region of rank 0 first, then rank 1 among the rest
    expected = []
    for o in orders:
        first, second = o.index(0), o.index(1)
        expected.append(b * w[first] / sum(w) * w[second] / (sum(w) - w[first]))
    assert sum(observed) == b
    assert chisquare(observed, expected).pvalue > 1e-4, (observed, expected)


def test_high_alpha_reveals_the_textured_region_first_and_alpha_zero_does_not():
    images, segments = three_textured_regions(2000, amplitudes=(0.0, 0.0, 1.0))  # two flat bands, one textured
    batch = {"segments": segments}
    first_textured = {}
    for alpha in (0.0, 4.0):
        s = SemanticInformativeMasking(0.75, random_fraction=0.0, segmenter="given", alpha=alpha)
        visible = ~s(images, (6, 6), torch.Generator().manual_seed(1), batch).mask
        first_textured[alpha] = (~visible[:, :24].any(1)).float().mean().item()  # 9 visible <= 12 textured patches
    assert first_textured[4.0] == 1.0 and 0.2 < first_textured[0.0] < 0.5, first_textured


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf"), "abc"])
def test_bad_alpha_is_a_config_error(alpha):
    with pytest.raises(ConfigError, match="masking.alpha"):
        SemanticInformativeMasking(alpha=alpha)
