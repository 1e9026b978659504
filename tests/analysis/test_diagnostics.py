"""diagnose(): every part over a stream of batches, its keys and files (strict JSON), per-part times, the same
artifact metrics as measure(), the invariance score when the real tokens are not kept, and the settings' checks."""

import json

import pytest
import torch

from semmae.analysis import measure
from semmae.analysis.diagnostics import PARTS, DiagnosticSettings, diagnose
from semmae.analysis.synthetic_images import synthetic_batches
from semmae.masking.random import RandomMasking
from tests.analysis import planting


def synthetic(n):
    return synthetic_batches(n, 1, planting.SIZE, [0.0], [1.0], seed=0, batch_size=8)


def test_every_part_runs_and_is_reported():
    enc = planting.encoder()
    planting.plant_cls_sink(enc, 0.8)
    batches = [planting.images(8, 1), planting.images(4, 2)]
    d = diagnose(
        enc, lambda: batches, DiagnosticSettings(), keep_images=2, masking=RandomMasking(0.75), synthetic=synthetic
    )
    assert set(d.timings) == {"capture", "artifacts", *PARTS}
    reference = measure(enc, batches)
    assert d.artifacts.blocks == reference.blocks and d.artifacts.num_images == 12
    assert d.heads[0].classes[0] == "nop" and d.outliers["detection_block"] == planting.DEPTH
    assert d.invariance.num_real == 12 and d.invariance.num_synthetic == 12
    data = json.loads(json.dumps(d.to_dict(), allow_nan=False))
    assert {"blocks", "shallow", "heads", "cls", "outliers", "invariance", "asymmetry", "timings_s"} <= set(data)
    assert data["heads"][0]["heads"][0]["class"] == "nop" and data["heads"][0]["nop_heads"] >= 1
    s = d.scalars()
    assert s["attn/block_01/nop_heads"] >= 1 and s["attn/nop_heads"] >= 1
    assert "attn/shallow_cls_cls" in s and "attn/si_count" in s and "asym/shallow_sink_ratio" in s
    assert s["attn/block_01/sink_ratio"] == reference.blocks[0]["sink_ratio"]


def test_parts_can_be_left_out():
    enc = planting.encoder()
    d = diagnose(enc, lambda: [planting.images(4)], DiagnosticSettings(parts=("cls",)))
    assert d.heads is None and d.invariance is None and d.asymmetry is None and d.cls is not None
    assert set(d.to_dict()) >= {"cls"} and "heads" not in d.to_dict()
    assert not any(k.endswith("nop_heads") for k in d.scalars())


def test_invariance_reads_the_images_again_when_their_tokens_are_not_kept(monkeypatch):
    from semmae.analysis import invariance as IV

    enc = planting.encoder()
    planting.plant_positional_direction(enc)
    batches = [planting.images(8, 1), planting.images(8, 2)]
    calls = []

    def source():
        calls.append(1)
        return batches

    kept = diagnose(enc, source, DiagnosticSettings(parts=("invariance",)), synthetic=synthetic)
    monkeypatch.setattr(IV.InvarianceAccumulator.__init__, "__defaults__", (0.0,))  # keep nothing
    again = diagnose(enc, source, DiagnosticSettings(parts=("invariance",)), synthetic=synthetic)
    assert len(calls) == 3  # once for the kept run, twice for the other
    # the same scores (explicit and fused attention differ by rounding, which only the unscored null space feels)
    scored = kept.invariance.scored
    assert torch.equal(scored, again.invariance.scored)
    torch.testing.assert_close(kept.invariance.scores[scored], again.invariance.scores[scored])
    assert float(again.invariance.scores[0]) == pytest.approx(1.0, abs=1e-6)


def test_settings_from_config_and_their_checks():
    s = DiagnosticSettings.from_config(
        {"tau": 3.0, "sinks": {"event": 0.8}, "outliers": {"ratio": 5}, "parts": ["heads"]}
    )
    assert s.artifacts.tau == 3.0 and s.sinks.event == 0.8 and s.outliers.ratio == 5 and s.parts == ("heads",)
    with pytest.raises(Exception, match="unknown"):
        DiagnosticSettings(parts=("heads", "everything"))
    with pytest.raises(Exception, match="analysis.sinks"):
        DiagnosticSettings.from_config({"sinks": {"evnt": 0.8}})
    with pytest.raises(Exception, match="masking"):
        diagnose(planting.encoder(), lambda: [planting.images(2)], DiagnosticSettings(parts=("asymmetry",)))
