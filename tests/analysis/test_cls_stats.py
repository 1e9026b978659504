"""CLS statistics: the formulas on an attention tensor worked out by hand (CLS only and with registers), the
attention branch and residual stream as the capture reads them, and a planted CLS sink seen from the patches."""

import math

import pytest
import torch

from semmae.analysis import cls_stats as C
from semmae.analysis.capture import capture
from tests.analysis import planting


def entropy(weights):
    return -sum(w * math.log(w) for w in weights if w > 0)


def test_attention_stats_by_hand():
    # T = 4: CLS + 3 patches, one head; rows = queries
    attn = torch.tensor([[[[0.4, 0.3, 0.2, 0.1], [0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.4, 0.2], [0.1, 0.3, 0.3, 0.3]]]])
    s = C.attention_stats(attn, 1)
    assert float(s["cls_cls"]) == pytest.approx(0.4)
    assert float(s["cls_patches"]) == pytest.approx(0.6)
    assert float(s["patches_cls"]) == pytest.approx((0.5 + 0.2 + 0.1) / 3)
    assert float(s["patch_self"]) == pytest.approx((0.5 + 0.4 + 0.3) / 3)
    assert float(s["cls_entropy"]) == pytest.approx(entropy([0.5, 1 / 3, 1 / 6]) / math.log(3))
    rows = [[1.0, 0.0, 0.0], [0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]]
    assert float(s["patch_entropy"]) == pytest.approx(sum(entropy(r) for r in rows) / 3 / math.log(3))


def test_registers_are_neither_cls_nor_patches():
    # CLS + 1 register + 2 patches; the register takes half of everything
    row = torch.tensor([0.1, 0.5, 0.2, 0.2])
    attn = row.expand(1, 2, 4, 4).clone()
    s = C.attention_stats(attn, 2)
    assert float(s["cls_patches"]) == pytest.approx(0.4)
    assert float(s["patches_cls"]) == pytest.approx(0.1)
    assert float(s["patch_self"]) == pytest.approx(0.2)
    assert float(s["cls_entropy"]) == pytest.approx(1.0)  # even over the two patches


def test_branch_ratios_by_hand():
    branch = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]])
    residual = torch.tensor([[[0.0, 10.0], [2.0, 0.0], [0.0, 1.0]]])
    r = C.branch_ratios(branch, residual, 1)
    assert float(r["branch_ratio_cls"]) == pytest.approx(0.5)
    assert float(r["branch_ratio_patches"]) == pytest.approx((0.5 + 2.0) / 2)


def test_capture_gives_the_branch_as_added_and_the_blocks_input():
    enc = planting.encoder(init_values=0.1)
    x = planting.images(3)
    cap = capture(enc, x, residual=True)
    for i, blk in enumerate(enc.blocks):
        start = cap.residual[i]
        want = start + cap.branch[i]
        want = want + blk.ls2(blk.mlp(blk.norm2(want)))
        torch.testing.assert_close(cap.tokens[i], want.detach(), atol=1e-5, rtol=1e-5)
        if i:
            torch.testing.assert_close(cap.residual[i], cap.tokens[i - 1])
    s = C.cls_stats(cap, 0)
    assert set(s) == set(C.STATS) and all(v.shape == (3,) for v in s.values())


def test_a_planted_cls_sink_shows_as_patches_to_cls():
    enc = planting.encoder()
    planting.plant_cls_sink(enc, 0.8)
    cap = capture(enc, planting.images(4), residual=True)
    s = C.cls_stats(cap, 0)
    # head 0 gives 0.8 to CLS from every query; the three other heads give it what they give
    others = cap.attn[0][:, 1:, 1:, 0].mean(dim=(1, 2))
    torch.testing.assert_close(s["patches_cls"], (0.8 + 3 * others) / 4, atol=1e-5, rtol=0)
    assert float(s["patches_cls"].min()) > 0.2


def test_fair_shares():
    assert C.fair_share("cls_cls", 65, 64) == pytest.approx(1 / 65)
    assert C.fair_share("cls_patches", 65, 64) == pytest.approx(64 / 65)
    assert C.fair_share("patch_entropy", 65, 64) == 1.0
