"""The instrument study's report (run.py --preset cpu-instrument, resolving_power.py): random's seed spread, each
control's paired effect and whether a diagnostic resolves it, the readings on the diagnostics that do, the asymmetry
under each masking, written into RESULTS.md from the cells' results.json files."""

import json
import statistics

from tests.experiments.test_semantic_vs_random import fake_task, load, run

resolving_power = load("resolving_power")

RANDOM = {0: 1.0, 1: 1.2, 2: 1.1}  # the sink ratio of random's seeds: spread 0.1


def analyze_cell(cell, sink, prefix, heads, asym_prefix=0.02, series=None):
    fake_task(cell / "pretrain", {})
    fake_task(
        cell / "analyze",
        {
            "attn/shallow_sink_ratio": sink,
            "attn/block_01/sink_ratio": 99.0,  # per block: not a row of its own
            "attn/shallow_prefix_share": prefix,
            "attn/nop_heads": heads,
            "attn/outlier_fraction": 0.0,  # no outlier anywhere: silent
            "asym/shallow_prefix_share": asym_prefix,
            "asym/block_01/prefix_share": 99.0,
        },
    )
    if series is not None:
        fake_task(cell / "finetune", {"test/top1": 0.8})
        (cell / "finetune" / "results.json").write_text(
            json.dumps({"metrics": {"test/top1": 0.8}, "artifact_series": series})
        )


def row(text: str, first: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def study(tmp_path):
    out = tmp_path / "study"
    for k, sink in RANDOM.items():
        end = [
            {"at": "start", "step": 0, "shallow_sink_ratio": 9.0},
            {"at": "end", "step": 9, "shallow_sink_ratio": sink},
        ]
        analyze_cell(out / "random" / f"seed{k}", sink, prefix=0.02 + 0.001 * k, heads=2, series=end)
        # registers: the prefix share up by far more than the spread in every seed, the sinks mixed in sign
        analyze_cell(
            out / "random_registers" / f"seed{k}", sink + (0.3, -0.2, 0.05)[k], prefix=0.1 + 0.001 * k, heads=2
        )
        # gated attention: NOP heads down in every seed but by less than two spreads of random's (spread 0 here:
        # one seed equal, so the signs disagree)
        analyze_cell(out / "random_gated" / f"seed{k}", sink, prefix=0.02 + 0.001 * k, heads=(1, 2, 1)[k])
        # a reading: prefix share up, consistently, by more than two spreads; one with a small consistent effect
        analyze_cell(out / "semantic" / f"seed{k}", sink + 0.05, prefix=0.03 + 0.001 * k, heads=2, asym_prefix=0.05)
    return out


def test_each_diagnostic_s_spread_effect_and_verdict(tmp_path):
    out = study(tmp_path)
    values = {
        a: {k: resolving_power.diagnostics(out / a / f"seed{k}") for k in RANDOM}
        for a in ("random", "random_registers", "random_gated", "semantic")
    }
    assert (
        "attn/block_01/sink_ratio" not in values["random"][0]
        and "asym/block_01/prefix_share" not in values["random"][0]
    )
    assert values["random"][0]["ft_end/shallow_sink_ratio"] == 1.0  # the series' last point, not its first
    keys = resolving_power.ordered_keys(values)
    assert keys[0].startswith("attn/shallow_") and keys[-1].startswith("ft_end/")
    quiet = resolving_power.silent(values, keys)
    table, resolved = resolving_power.resolving_table(values, keys, ["random_registers", "random_gated"], quiet)
    r = row(table, "pretrained: shallow_prefix_share")
    assert r[2] == f"{statistics.stdev([0.020, 0.021, 0.022]):.3g}"  # random's spread
    assert r[3].startswith("+0.080 ± 0.000 (3/3 higher)") and r[4] == "**resolves**"
    r = row(table, "pretrained: shallow_sink_ratio")
    assert "2/3 higher" in r[3] and r[4] == "no"  # the seeds disagree in sign
    assert row(table, "pretrained: nop_heads")[6] == "no"  # random's spread 0, one gated seed equal to random
    assert row(table, "fine-tune end: shallow_sink_ratio")[4] == "— (0 paired seeds)"  # the controls not fine-tuned
    assert row(table, "pretrained: outlier_fraction")[4] == "silent" == row(table, "pretrained: outlier_fraction")[6]
    assert quiet == ["attn/outlier_fraction"]
    assert resolved == {"random_registers": ["attn/shallow_prefix_share"], "random_gated": []}
    # the readings: only on the diagnostics that resolve a control, with the same rule
    text = resolving_power.readings_table(values, resolved["random_registers"], ["semantic"])
    assert row(text, "pretrained: shallow_prefix_share")[1] == "+0.010 ± 0.000 (3/3 higher) **effect**"


def test_too_few_seeds_cannot_resolve():
    assert resolving_power.resolves([5.0, 6.0], 0.1) is None
    assert resolving_power.resolves([5.0, 6.0, 7.0], None) is None
    assert resolving_power.resolves([0.25, 0.2, 0.3], 0.1) is True
    assert resolving_power.resolves([0.1, 0.15, 0.2], 0.1) is False  # agree in sign, mean 0.15 below 0.2
    assert resolving_power.resolves([0.1, 0.1, 0.1], 0.1) is False  # below two spreads
    assert resolving_power.resolves([0.3, -0.3, 0.9], 0.1) is False  # the signs disagree


def test_the_instrument_section_is_written_from_the_cells(tmp_path):
    out = study(tmp_path)
    results = tmp_path / "RESULTS.md"
    argv = ["--preset", "cpu-instrument", "--out", str(out), "--results", str(results), "--report-only"]
    assert run.main(argv) == 0
    text = results.read_text()
    assert "<!-- BEGIN cpu-instrument (written by run.py) -->" in text and "Decision rule" not in text
    arms = "random, random_registers, random_gated, semantic, semantic_features"
    assert f"## Preset `cpu-instrument`: {arms} x seeds 0, 1, 2" in text
    assert "`semantic_features` seeds none" in text  # the preset's arm without a cell yet
    assert "- `random_registers` (the control with a known effect): resolved by 1 of 6 diagnostics: " in text
    assert "- `random_gated` (the gated-attention control): resolved by 0 of 6 diagnostics" in text
    assert "- silent at this scale (the same value in every cell): 1 of 6: `attn/outlier_fraction`" in text
    asym = row(text, "shallow_prefix_share")  # the asymmetry table: one column per arm
    assert asym[1] == "0.020 ± 0.000" and asym[4] == "0.050 ± 0.000"
    assert "| pretrained: shallow_prefix_share | +0.010 ± 0.000 (3/3 higher) **effect** |" in text


def test_no_spread_without_two_seeds_of_random(tmp_path):
    out = tmp_path / "study"
    analyze_cell(out / "random" / "seed0", 1.0, 0.02, 2)
    results = tmp_path / "RESULTS.md"
    assert run.main(["--preset", "cpu-instrument", "--out", str(out), "--results", str(results), "--report-only"]) == 0
    assert "No resolving power yet: `random` needs at least two seeds" in results.read_text()
