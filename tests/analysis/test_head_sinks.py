"""The head-sink taxonomy: the formulas on tensors worked out by hand, a NOP and a broadcast sink planted in a real
encoder's block 1 head 0 (known mass, on CLS), and a randomly initialised encoder in which no head is a sink."""

import math

import pytest
import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer

from semmae.analysis import head_sinks as HS
from semmae.analysis.capture import capture
from semmae.models.gated_attention import GatedAttention
from tests.analysis import planting


def test_head_stats_by_hand():
    # one image, one head, three tokens; u = v (identity projection)
    attn = torch.tensor([[[[0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.5, 0.5, 0.0]]]])
    v = torch.tensor([[[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]]])
    s = HS.head_stats(attn, v, torch.eye(2)[None])
    assert int(s["sink"]) == 0  # column means 0.6, 1/3, 1/15
    assert float(s["mass"]) == pytest.approx(0.6)
    assert float(s["routed_frac"]) == pytest.approx(1.0)  # 0.6, 0.7, 0.5 >= 0.5
    assert float(s["ratio_out"]) == pytest.approx(5.0 / 1.5)  # ||(3, 4)|| over the mean of 1 and 2
    U = attn[0, 0] @ v[0, 0]
    sv = torch.linalg.svdvals(U.double())
    assert float(s["stable_rank"]) == pytest.approx(float((sv**2).sum() / sv[0] ** 2), rel=1e-5)
    # a gate on the second query's output scales its row of U
    gates = torch.tensor([1.0, 0.0, 1.0])[None, None, :, None]
    sv = torch.linalg.svdvals((U * gates[0, 0]).double())
    gated = HS.head_stats(attn, v, torch.eye(2)[None], gates)
    assert float(gated["stable_rank"]) == pytest.approx(float((sv**2).sum() / sv[0] ** 2), rel=1e-5)


def test_routed_fraction_counts_queries_at_or_above_the_threshold():
    attn = torch.tensor([[[[0.5, 0.5], [0.49, 0.51]]]])  # column means 0.495 / 0.505: the sink is token 1
    s = HS.head_stats(attn, torch.ones(1, 1, 2, 1), torch.ones(1, 1, 1))
    assert int(s["sink"]) == 1 and float(s["routed_frac"]) == pytest.approx(1.0)
    assert float(HS.head_stats(attn, torch.ones(1, 1, 2, 1), torch.ones(1, 1, 1), route=0.51)["routed_frac"]) == 0.5


def test_classes_follow_the_papers_thresholds():
    routed = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.89, 0.95])
    ratio = torch.tensor([0.2, 0.5, 0.5, 0.35, 0.0, 3.0])
    rank = torch.tensor([1.0, 1.5, 1.51, 1.0, 1.0, float("nan")])
    got = [HS.CLASSES[int(c)] for c in HS.classify(routed, ratio, rank)]
    assert got == ["nop", "broadcast", "other", "other", "none", "other"]


def test_value_projection_includes_layer_scale():
    enc = planting.encoder(init_values=0.5)
    cap = capture(enc, planting.images(2), values=True)
    blk = enc.blocks[0]
    u = cap.head_values(0)  # [B, H, T, D]
    v = cap.values[0]
    h = 1
    w = blk.attn.proj.weight[:, h * planting.HEAD_DIM : (h + 1) * planting.HEAD_DIM]
    want = (v[:, h] @ w.T) * blk.ls1.gamma
    torch.testing.assert_close(u[:, h], want.detach(), atol=1e-5, rtol=1e-5)
    # the heads' updates, projected and summed, are the attention branch (less the projection's bias)
    update = torch.einsum("bhij,bhjd->bid", cap.attn[0], u)
    x = enc.blocks[0].norm1(enc._pos_embed(enc.patch_embed(planting.images(2))))
    branch = blk.ls1(blk.attn(x)) - blk.ls1.gamma * blk.attn.proj.bias
    torch.testing.assert_close(update, branch.detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mass", [0.6, 0.85])
def test_planted_nop_sink_on_cls_is_found_with_its_mass(mass):
    enc = planting.encoder()
    planting.plant_cls_sink(enc, mass, value="nop")
    cap = capture(enc, planting.images(6), values=True)
    torch.testing.assert_close(cap.attn[0][:, 0, :, 0], torch.full((6, 1 + planting.P), mass), atol=1e-5, rtol=0)
    acc = HS.HeadSinkAccumulator()
    acc.update(cap)
    blocks = acc.result()
    head = blocks[0]
    assert head.classes[0] == "nop" and head.positions[0] == "cls" and head.sink_token[0] == 0
    assert head.mass[0] == pytest.approx(mass, abs=1e-5)
    assert head.routed_frac[0] == pytest.approx(1.0)
    assert head.ratio_out[0] == pytest.approx(0.0, abs=1e-4)
    assert head.class_shares[0]["nop"] == 1.0
    assert head.counts()["nop_heads"] >= 1 and head.counts()["sinks_on_cls"] >= 1


def test_planted_broadcast_sink_is_broadcast():
    enc = planting.encoder()
    planting.plant_cls_sink(enc, 0.9, value="broadcast")
    acc = HS.HeadSinkAccumulator()
    acc.update(capture(enc, planting.images(6), values=True))
    head = acc.result()[0]
    assert head.classes[0] == "broadcast" and head.positions[0] == "cls"
    assert head.ratio_out[0] >= 0.5 and head.stable_rank[0] == pytest.approx(1.0, abs=1e-3)


def test_a_random_encoder_has_no_sink_heads():
    enc = planting.encoder(seed=3)
    acc = HS.HeadSinkAccumulator()
    for seed in (1, 2):
        acc.update(capture(enc, planting.images(8, seed), values=True))
    for block in acc.result():
        assert block.classes == ["none"] * planting.HEADS
        assert max(block.routed_frac) == 0.0
        # near-even attention: the largest column takes little more than its fair share 1/T
        assert max(block.mass) < 3.0 / (1 + planting.P)
        assert all(r is None for r in block.stable_rank)  # no events, no stable rank


def test_sink_positions_tell_cls_registers_and_patches():
    sink = torch.tensor([0, 1, 3, 4, 20])
    assert [HS.POSITIONS[int(p)] for p in HS.sink_position(sink, 4)] == [
        "cls",
        "register",
        "register",
        "patch",
        "patch",
    ]
    assert [HS.POSITIONS[int(p)] for p in HS.sink_position(sink, 1)] == ["cls", "patch", "patch", "patch", "patch"]


def test_a_head_takes_its_most_frequent_class():
    # 3 images x 2 heads: head 0 nop, nop, none -> nop; head 1 none, broadcast, broadcast -> broadcast
    codes = torch.tensor([[1, 0], [1, 2], [0, 2]])
    best, counts = HS._mode(codes, tuple(HS.CLASSES.index(c) for c in HS.TIE_ORDER), len(HS.CLASSES))
    assert best.tolist() == [1, 2] and counts[0].tolist() == [1, 2, 0, 0]
    tie = torch.tensor([[0], [1]])  # one none, one nop: the tie goes to nop
    assert HS._mode(tie, tuple(HS.CLASSES.index(c) for c in HS.TIE_ORDER), len(HS.CLASSES))[0].tolist() == [1]
    assert math.isclose(HS.SinkThresholds().event, 0.9)


class ChannelGated(Attention):
    """timm's own gate: a sigmoid per channel of the heads' output, from the block's normed input."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, gated=True, **kwargs)


@pytest.mark.parametrize("gate", ["timm per channel", "semmae per head"])
def test_gated_heads_updates_add_up_to_the_attention_branch(gate):
    if gate == "timm per channel":  # a plain timm ViT: the capture reads any
        torch.manual_seed(0)
        enc = VisionTransformer(
            img_size=planting.SIZE,
            patch_size=planting.PATCH,
            in_chans=1,
            embed_dim=planting.WIDTH,
            depth=planting.DEPTH,
            num_heads=planting.HEADS,
            num_classes=0,
            attn_layer=ChannelGated,
        ).eval()
    else:
        enc = planting.encoder(attn_gate=True)
        assert isinstance(enc.blocks[0].attn, GatedAttention)
        with torch.no_grad():  # the gate starts the same for every token: make it differ per token and head
            for blk in enc.blocks:
                blk.attn.gate.weight.normal_(0, 0.5)
    x = planting.images(3)
    cap = capture(enc, x, values=True, residual=True)
    for i, blk in enumerate(enc.blocks):
        assert cap.gates[i] is not None and cap.gates[i].shape[:3] == (3, planting.HEADS, 1 + planting.P)
        update = torch.einsum("bhij,bhjd->bhid", cap.attn[i], cap.head_values(i))  # per head, before the gate
        factor = cap.gates[i] if cap.gates[i].shape[-1] == 1 else None
        if factor is None:  # per channel: gate the head outputs in head space, then project
            o = cap.gates[i] * (cap.attn[i] @ cap.values[i])
            update = torch.einsum("bhtk,hdk->bhtd", o, cap.head_out[i])
        else:
            update = update * factor
        torch.testing.assert_close(update.sum(dim=1), cap.branch[i] - blk.attn.proj.bias.detach(), atol=1e-4, rtol=1e-4)
    acc = HS.HeadSinkAccumulator()
    acc.update(cap)  # the gates go into the stable rank of each update
    assert len(acc.result()) == planting.DEPTH
