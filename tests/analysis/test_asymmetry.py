"""The asymmetry between the pretraining and the full view: uniform attention is the same in both once each share is
taken relative to its fair share (and 4x apart before); a planted CLS sink gives the shares worked out by hand in
each view; the pretraining mask is seeded, and the checkpoint's mask ratio is read from its record."""

import pytest
import torch

from semmae.analysis import asymmetry as AS
from semmae.analysis import head_sinks as HS
from semmae.analysis.capture import capture
from semmae.analysis.diagnostics import DiagnosticSettings, diagnose
from semmae.masking.random import RandomMasking
from semmae.masking.semantic_features import SemanticFeaturesMasking
from tests.analysis import planting

GRID = (planting.GRID, planting.GRID)


def run(enc, x, ratio=0.75, seed=0, parts=("heads", "cls", "asymmetry")):
    settings = DiagnosticSettings(parts=parts, asymmetry=AS.AsymmetrySettings(seed=seed))
    return diagnose(enc, lambda: [x], settings, masking=RandomMasking(ratio))


def test_uniform_attention_is_alike_in_both_views_only_relative_to_fair_shares():
    enc = planting.encoder()
    with torch.no_grad():
        for blk in enc.blocks:
            blk.attn.qkv.weight.zero_()
            blk.attn.qkv.bias.zero_()  # q = k = 0: every query attends evenly to every token
    d = run(enc, planting.images(4))
    a = d.asymmetry
    assert a.visible_patches == 4 and a.tokens == {"full": 17, "pretraining": 5}
    shares = (
        "sink_ratio",
        "attention_entropy",
        "prefix_share",
        "flat_patch_share",
        "cls_cls",
        "cls_patches",
        "patches_cls",
        "patch_self",
        "cls_entropy",
        "patch_entropy",
        "sink_mass",
    )
    for block in a.difference:
        for name in shares:
            assert block[name] == pytest.approx(0.0, abs=1e-5), name
    for block in a.full + a.pretraining:
        assert block["cls_cls"] == pytest.approx(1.0, abs=1e-5)
        assert block["prefix_share"] == pytest.approx(1.0, abs=1e-5)
    # the raw shares are 17/5 apart: CLS->CLS is 1/17 in the full view, 1/5 in the pretraining view
    assert d.cls[0]["cls_cls"] == pytest.approx(1 / 17, abs=1e-6)
    scalars = d.scalars()
    assert scalars["asym/block_01/cls_cls"] == pytest.approx(0.0, abs=1e-5) and "asym/shallow_cls_cls" in scalars


def test_a_planted_cls_sink_in_both_views_by_hand():
    """Head 0 of block 1 gives CLS e^beta / (e^beta + T - 1) from every query: 0.8 of 17 tokens in the full view,
    64 / 68 of 5 tokens in the pretraining view (beta = log 64): 13.6 and 4.71 times the fair share."""
    mass = 0.8
    enc = planting.encoder()
    planting.plant_cls_sink(enc, mass)
    x = planting.images(4)
    ids_keep = RandomMasking(0.75)(x, GRID, torch.Generator().manual_seed(0)).ids_keep
    full, pre = HS.HeadSinkAccumulator(), HS.HeadSinkAccumulator()
    full.update(capture(enc, x, values=True))
    pre.update(capture(enc, x, ids_keep=ids_keep, values=True))
    assert full.result()[0].mass[0] == pytest.approx(0.8, abs=1e-5)
    assert pre.result()[0].mass[0] == pytest.approx(64 / 68, abs=1e-5)
    # through diagnose: each view's block value is the mean over the 4 heads, times that view's T
    d = run(enc, x)
    a = d.asymmetry
    assert a.full[0]["sink_mass"] == pytest.approx(17 * sum(d.heads[0].mass) / 4, rel=1e-5)
    assert a.pretraining[0]["sink_mass"] >= 5 * (64 / 68) / 4 - 1e-5  # head 0's share alone
    assert a.difference[0]["sink_mass"] == pytest.approx(a.pretraining[0]["sink_mass"] - a.full[0]["sink_mass"])
    # CLS is always in the pretraining view: the patches give it the planted share there as well
    assert a.pretraining[0]["patches_cls"] > a.pretraining[1]["patches_cls"]


def test_the_pretraining_view_is_seeded():
    enc = planting.encoder(seed=2)
    x = planting.images(6)
    one, two, other = run(enc, x, seed=1), run(enc, x, seed=1), run(enc, x, seed=5)
    assert one.asymmetry.difference == two.asymmetry.difference
    assert one.asymmetry.difference != other.asymmetry.difference


def test_masks_for_strategies_that_read_features_or_the_dataset():
    x = planting.images(3)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, planting.P, planting.WIDTH)
    m = AS.pretraining_mask(SemanticFeaturesMasking(mask_ratio=0.75, warmup=0.0), x, GRID, g, feats)
    assert m.ids_keep.shape == (3, 4)
    with pytest.raises(Exception, match="features"):
        AS.pretraining_mask(SemanticFeaturesMasking(mask_ratio=0.75, warmup=0.0), x, GRID, g, None)

    class Given(RandomMasking):
        def data_needs(self):
            return {"segments": None}

    with pytest.raises(Exception, match="segments"):
        AS.pretraining_mask(Given(0.75), x, GRID, g)


def test_the_checkpoints_mask_ratio(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": {},
            "semmae": {"kind": "pretrain", "masking": "RandomMasking(mask_ratio=0.6, visible_count='official')"},
        },
        path,
    )
    assert AS.checkpoint_mask_ratio(str(path)) == 0.6
    torch.save({"state_dict": {}, "semmae": {"kind": "linprobe"}}, path)
    assert AS.checkpoint_mask_ratio(str(path)) is None
    assert AS.checkpoint_mask_ratio(None) is None and AS.checkpoint_mask_ratio("timm:vit_small_patch16_224") is None
    with pytest.raises(Exception, match="mask_ratio"):
        AS.AsymmetrySettings(mask_ratio=1.0)
