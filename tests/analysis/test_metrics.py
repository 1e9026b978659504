"""Artifact metrics (docs/artifacts.md#metrics) on constructed attention and tokens, where the answer is known."""

import math

import pytest
import torch

from semmae.analysis import metrics as M
from semmae.errors import ConfigError
from semmae.masking.regions import patch_pixel_std

B, H, PREFIX, P = 3, 2, 1, 16
T = PREFIX + P


def uniform_attention() -> torch.Tensor:
    return torch.full((B, H, T, T), 1.0 / T)


def one_patch_attention(j: int) -> torch.Tensor:
    a = torch.zeros(B, H, T, T)
    a[..., PREFIX + j] = 1.0
    return a


def test_uniform_attention_is_even_and_maximally_uncertain():
    a = uniform_attention()
    r = M.received_attention(a, PREFIX)
    assert torch.allclose(r, torch.ones(B, P))
    assert torch.allclose(M.sink_ratio(r), torch.ones(B))
    assert torch.equal(M.artifact_fraction(r, tau=4.0), torch.zeros(B))
    assert torch.allclose(M.attention_entropy(a), torch.ones(B))


def test_every_query_attending_one_patch_gives_sink_ratio_p():
    a = one_patch_attention(5)
    r = M.received_attention(a, PREFIX)
    assert torch.allclose(M.sink_ratio(r), torch.full((B,), float(P)))
    assert torch.allclose(M.artifact_fraction(r, tau=4.0), torch.full((B,), 1.0 / P))
    assert torch.allclose(M.attention_entropy(a), torch.zeros(B), atol=1e-7)
    assert torch.equal(M.sink_positions(r), torch.full((B,), 5))


def test_attention_to_prefix_tokens_does_not_count_as_received_by_patches():
    a = torch.zeros(B, H, T, T)
    a[..., 0] = 0.5  # half of every query's attention goes to CLS
    a[..., PREFIX:] = 0.5 / P
    assert torch.allclose(M.received_attention(a, PREFIX), torch.ones(B, P))
    entropy = -(0.5 * math.log(0.5) + P * (0.5 / P) * math.log(0.5 / P)) / math.log(T)
    assert torch.allclose(M.attention_entropy(a), torch.full((B,), entropy))


def test_artifact_fraction_counts_patches_above_tau():
    r = torch.ones(1, 8)
    r[0, :2] = torch.tensor([5.0, 4.0])  # 4.0 is not above tau
    assert M.artifact_fraction(r, tau=4.0).item() == pytest.approx(1 / 8)


def test_cls_attention_is_scaled_to_fair_share():
    a = one_patch_attention(2)
    c = M.cls_attention(a, PREFIX)
    assert c[:, 2].tolist() == [float(P)] * B and c.sum(dim=-1).tolist() == [float(P)] * B


def test_high_norm_detection_finds_planted_outliers():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, PREFIX + 64, 32, generator=g)
    planted = [3, 17, 40]
    tokens[0, [PREFIX + i for i in planted]] *= 10.0
    tokens[:, 0] *= 100.0  # a huge CLS token is not a patch token and must not count
    frac = M.high_norm_fraction(tokens, PREFIX, k=5.0)
    assert frac[0].item() == pytest.approx(len(planted) / 64)
    assert frac[1].item() == 0.0


def test_high_norm_fraction_is_zero_when_all_norms_are_equal():
    tokens = torch.ones(1, PREFIX + 16, 8)
    assert M.high_norm_fraction(tokens, PREFIX, k=5.0).item() == 0.0


def test_sink_position_consistency_is_share_at_the_modal_position():
    share, mode = M.sink_position_consistency(torch.tensor([3, 3, 3, 5]), num_patches=16)
    assert (share, mode) == (0.75, 3)


def test_flat_patch_share_is_fraction_under_even_attention_and_one_on_a_flat_sink():
    images = torch.rand(2, 1, 16, 16)
    images[:, :, :4, :] = 0.3  # the top row of 4x4 patches (4 of 16) is flat
    w = M.flat_patch_weights(patch_pixel_std(images, (4, 4)), fraction=0.25)
    assert torch.equal(w[:, :4], torch.ones(2, 4)) and w[:, 4:].sum() == 0
    assert torch.allclose(M.flat_patch_share(torch.ones(2, 16), w), torch.full((2,), 0.25))
    sink = torch.zeros(2, 16)
    sink[:, 1] = 16.0  # all attention on a flat patch
    assert torch.allclose(M.flat_patch_share(sink, w), torch.ones(2))


def test_flat_patch_weights_share_ties_and_ignore_patch_order():
    images = torch.rand(1, 1, 16, 16)
    images[:, :, :8, :] = 0.0  # 8 constant patches tie for the 4 flattest places
    std = patch_pixel_std(images, (4, 4))
    w = M.flat_patch_weights(std, fraction=0.25)
    assert torch.allclose(w.sum(dim=-1), torch.tensor([4.0]))
    assert torch.allclose(w[0, :8], torch.full((8,), 0.5))
    perm = torch.randperm(16)
    assert torch.allclose(M.flat_patch_weights(std[:, perm], 0.25), w[:, perm])


@pytest.mark.parametrize("depth,expected", [(6, [1, 2]), (12, [1, 2, 3, 4]), (2, [1]), (24, list(range(1, 9)))])
def test_shallow_blocks_default_to_the_first_third(depth, expected):
    assert M.shallow_blocks(depth) == expected


def test_shallow_blocks_configurable_and_checked():
    assert M.shallow_blocks(12, 3) == [1, 2, 3]
    assert M.shallow_blocks(12, [4, 2]) == [2, 4]
    with pytest.raises(ConfigError, match="between 1 and"):
        M.shallow_blocks(6, [0, 7])
    with pytest.raises(ConfigError):
        M.shallow_blocks(6, 9)
