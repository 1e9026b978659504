"""Planted artifacts: synthetic attention and block outputs in which one patch, the CLS token or a register receives
a known share of every query's attention, and one patch token has a known norm. Every metric of docs/artifacts.md is
worked out by hand here, for the metric functions and through measure() (aggregation, shallow means, registers)."""

import math

import pytest
import torch
from torch import nn

from semmae.analysis import ArtifactSettings, artifacts
from semmae.analysis import metrics as M
from semmae.analysis.capture import Capture
from semmae.masking.regions import patch_pixel_std

GRID = (4, 4)
P = 16  # patches
SINK = 5  # row 1, col 1
B, H, D = 3, 2, 8


def planted_attention(prefix: int, weights: dict[int, float]) -> torch.Tensor:
    """[B, H, T, T]: every query gives weights[t] to token t (token index in 0..T-1) and spreads the rest evenly
    over the patch tokens that have no weight of their own."""
    T = prefix + P
    row = torch.zeros(T, dtype=torch.float64)
    for t, w in weights.items():
        row[t] = w
    rest = [t for t in range(prefix, T) if t not in weights]
    row[rest] = (1.0 - sum(weights.values())) / len(rest)
    return row.expand(B, H, T, T).clone()


def planted_tokens(prefix: int, sink_norm: float = 10.0) -> torch.Tensor:
    """[B, T, D]: prefix tokens of norm 100 (ignored by the patch metrics); patch norms: sink_norm for the sink patch,
    1 for seven of the other patches and 2 for the remaining eight."""
    others = [1.0] * 7 + [2.0] * 8
    norms = torch.tensor(others[:SINK] + [sink_norm] + others[SINK:])
    tokens = torch.zeros(B, prefix + P, D, dtype=torch.float64)
    tokens[:, :prefix, 0] = 100.0
    tokens[:, prefix:, 1] = norms.double()
    return tokens


def flat_sink_images() -> torch.Tensor:
    """[B, 1, 16, 16] (4 x 4 patches of 4 x 4 pixels): noise everywhere except the sink patch, which is constant,
    so that the flattest 1/16 of the patches is exactly the sink."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(B, 1, 16, 16, generator=g) + 0.5
    r, c = divmod(SINK, GRID[1])
    images[:, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 0.25
    return images


def entropy(weights: list[float], T: int) -> float:
    return -sum(w * math.log(w) for w in weights if w > 0) / math.log(T)


# --- by hand ----------------------------------------------------------------------------------------------------
# CLS gets c = 1/4, the sink patch s = 3/8 of every query's attention; the other 15 patches q = (3/8) / 15 each.
# Patch keys receive 1 - c = 3/4 in all: r'(sink) = s * P / (1 - c) = 8, r'(other) = q * P / (1 - c) = 8/15.
C, S = 0.25, 0.375
Q = (1 - C - S) / (P - 1)
R_SINK = S * P / (1 - C)  # 8
R_OTHER = Q * P / (1 - C)  # 8/15
# norms: 1 x 7, 2 x 8, 10 (the sink): median (8th and 9th of 16) = 2; |n - 2|: 0 x 8, 1 x 7, 8 -> MAD = (0 + 1) / 2
MED, MAD = 2.0, 0.5


@pytest.mark.parametrize("prefix", [1, 3])  # CLS only; CLS + 2 registers (the registers get no attention here)
def test_planted_patch_sink_gives_every_metric_by_hand(prefix):
    attn = planted_attention(prefix, {0: C, prefix + SINK: S})
    tokens = planted_tokens(prefix)
    r = M.received_attention(attn, prefix)
    expected_r = torch.full((B, P), R_OTHER, dtype=torch.float64)
    expected_r[:, SINK] = R_SINK
    torch.testing.assert_close(r.double(), expected_r)
    assert M.sink_ratio(r).tolist() == pytest.approx([8.0] * B, abs=1e-6)
    assert M.artifact_fraction(r, tau=4.0).tolist() == [1 / 16] * B  # only the sink is above 4
    assert M.artifact_fraction(r, tau=0.5).tolist() == [1.0] * B  # 8/15 > 1/2: every patch
    assert M.sink_positions(r).tolist() == [SINK] * B
    assert M.sink_position_consistency(M.sink_positions(r), P) == (1.0, SINK)
    T = prefix + P
    assert M.attention_entropy(attn).tolist() == pytest.approx([entropy([C, S] + [Q] * 15, T)] * B, abs=1e-6)
    assert M.prefix_share(attn, prefix).tolist() == pytest.approx([C] * B, abs=1e-6)
    # high_norm_fraction: threshold med + 5 MAD = 4.5, only the sink's 10 is above; the prefix's 100 is left out
    assert M.high_norm_fraction(tokens, prefix, k=5.0).tolist() == [1 / 16] * B
    assert M.high_norm_fraction(planted_tokens(prefix, sink_norm=4.0), prefix, k=5.0).tolist() == [0.0] * B  # 4 < 4.5
    assert M.high_norm_fraction(planted_tokens(prefix, sink_norm=4.0), prefix, k=3.0).tolist() == [1 / 16] * B  # > 3.5
    assert M.norm_ratio(tokens, prefix).tolist() == pytest.approx([10.0 / MED] * B)
    # flat_patch_share: the flattest 1/16 is the sink: r'(sink) / sum r' = 8 / 16
    flat_w = M.flat_patch_weights(patch_pixel_std(flat_sink_images(), (4, 4)), fraction=1 / 16)
    assert flat_w.sum(dim=-1).tolist() == [1.0] * B and flat_w[:, SINK].tolist() == [1.0] * B
    assert M.flat_patch_share(r, flat_w).tolist() == pytest.approx([R_SINK / P] * B, abs=1e-6)
    # the CLS query attends like every other query: c(sink) = s * P / (1 - c), as r'
    assert M.cls_attention(attn, prefix)[:, SINK].tolist() == pytest.approx([R_SINK] * B, abs=1e-6)


@pytest.mark.parametrize("sink_token", [0, 2])  # the CLS token; the second of 3 registers (prefix = CLS + 3)
def test_planted_prefix_sink_is_prefix_share_and_leaves_the_patch_metrics_even(sink_token):
    prefix = 4
    attn = planted_attention(prefix, {sink_token: 0.6})  # the rest, 0.4, evenly over the 16 patches
    tokens = planted_tokens(prefix, sink_norm=2.0)  # norms 1 x 7, 2 x 9: median 2, max 2
    tokens[:, sink_token, 0] = 1e4  # a huge register / CLS token is not a patch token
    r = M.received_attention(attn, prefix)
    torch.testing.assert_close(r.double(), torch.ones(B, P, dtype=torch.float64))
    assert M.sink_ratio(r).tolist() == pytest.approx([1.0] * B)
    assert M.artifact_fraction(r).tolist() == [0.0] * B
    assert M.prefix_share(attn, prefix).tolist() == pytest.approx([0.6] * B)
    assert M.attention_entropy(attn).tolist() == pytest.approx([entropy([0.6] + [0.4 / 16] * 16, 20)] * B)
    assert M.norm_ratio(tokens, prefix).tolist() == pytest.approx([1.0] * B)
    assert M.high_norm_fraction(tokens, prefix).tolist() == [0.0] * B
    # with the wrong prefix (CLS only), the registers would count as patches: the register sink shows as a patch
    if sink_token > 0:
        assert M.sink_ratio(M.received_attention(attn, 1)).min() > 4


def test_prefix_share_counts_patch_queries_only():
    attn = planted_attention(1, {0: 0.25})
    attn[:, :, 0] = 0.0
    attn[:, :, 0, 0] = 1.0  # the CLS query attends only to itself: not counted
    assert M.prefix_share(attn, 1).tolist() == pytest.approx([0.25] * B)


def test_num_prefix_tokens_defaults_to_cls_only_and_is_checked():
    attn, tokens = planted_attention(1, {0: C, 1 + SINK: S}), planted_tokens(1)
    torch.testing.assert_close(M.received_attention(attn), M.received_attention(attn, 1))
    assert M.prefix_share(attn).tolist() == M.prefix_share(attn, 1).tolist()
    assert M.norm_ratio(tokens).tolist() == M.norm_ratio(tokens, 1).tolist()
    with pytest.raises(Exception, match="num_prefix_tokens"):
        M.received_attention(attn, 17)


# --- through measure(): aggregation over images and blocks, shallow means, registers --------------------------------
class FakeEncoder(nn.Module):
    """What measure() reads from an encoder: a parameter (its device), patch_embed.grid_size and patch_size."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.patch_embed = nn.Module()
        self.patch_embed.grid_size = GRID
        self.patch_embed.patch_size = (4, 4)


@pytest.mark.parametrize("prefix", [1, 5])  # CLS only; CLS + 4 registers
def test_measure_reports_the_planted_values_per_block_and_shallow(monkeypatch, prefix):
    # block 1: the patch sink above; block 2: every query gives 0.5 to the last prefix token (CLS or a register),
    # 0.5 evenly to the patches; block 3: uniform over all tokens
    T = prefix + P
    blocks = [
        (planted_attention(prefix, {0: C, prefix + SINK: S}), planted_tokens(prefix)),
        (planted_attention(prefix, {prefix - 1: 0.5}), planted_tokens(prefix, sink_norm=2.0)),
        (torch.full((B, H, T, T), 1.0 / T, dtype=torch.float64), planted_tokens(prefix, sink_norm=4.0)),
    ]

    def fake_capture(encoder, images):
        n = images.shape[0]
        return Capture(
            attn=[a[:n].float() for a, _ in blocks],
            tokens=[t[:n].float() for _, t in blocks],
            output=torch.zeros(1),
            num_prefix_tokens=prefix,
        )

    monkeypatch.setattr(artifacts, "capture", fake_capture)
    images = flat_sink_images()
    settings = ArtifactSettings(flat_fraction=1 / 16, shallow_blocks=2)
    report = artifacts.measure(FakeEncoder(), [images[:2], images[2:]], settings)  # two batches: 2 + 1 images
    assert report.num_images == B
    expected = [
        {
            "sink_ratio": R_SINK,
            "artifact_fraction": 1 / 16,
            "attention_entropy": entropy([C, S] + [Q] * 15, T),
            "high_norm_fraction": 1 / 16,
            "sink_position_consistency": 1.0,
            "flat_patch_share": R_SINK / P,
            "prefix_share": C,
            "norm_ratio": 5.0,
        },
        {
            "sink_ratio": 1.0,
            "artifact_fraction": 0.0,
            "attention_entropy": entropy([0.5] + [0.5 / 16] * 16, T),
            "high_norm_fraction": 0.0,
            "sink_position_consistency": 1.0,
            "flat_patch_share": 1 / 16,
            "prefix_share": 0.5,
            "norm_ratio": 1.0,
        },
        {
            "sink_ratio": 1.0,
            "artifact_fraction": 0.0,
            "attention_entropy": 1.0,
            # norms 1 x 7, 2 x 8, 4: median 2, MAD 0.5, threshold 4.5: none above; max / median = 2
            "high_norm_fraction": 0.0,
            "sink_position_consistency": 1.0,
            "flat_patch_share": 1 / 16,
            "prefix_share": prefix / T,
            "norm_ratio": 2.0,
        },
    ]
    for got, want in zip(report.blocks, expected):
        assert set(got) == set(M.METRICS)
        for name in M.METRICS:
            assert got[name] == pytest.approx(want[name], abs=1e-6), name
    assert report.sink_modes[0] == divmod(SINK, GRID[1])
    for name in M.METRICS:  # shallow = blocks 1-2
        assert report.shallow[f"shallow_{name}"] == pytest.approx((expected[0][name] + expected[1][name]) / 2, abs=1e-6)
    keys = report.scalars()
    assert keys["attn/block_01/prefix_share"] == pytest.approx(C) and keys["attn/shallow_norm_ratio"] == pytest.approx(
        3.0
    )


def test_measure_rejects_a_prefix_that_does_not_match_the_tokens(monkeypatch):
    attn, tokens = planted_attention(3, {0: 0.5}), planted_tokens(3)
    monkeypatch.setattr(
        artifacts,
        "capture",
        lambda encoder, images: Capture(
            attn=[attn.float()], tokens=[tokens.float()], output=torch.zeros(1), num_prefix_tokens=1
        ),
    )
    with pytest.raises(Exception, match="num_prefix_tokens=1"):
        artifacts.measure(FakeEncoder(), [flat_sink_images()])
