"""The study report's diagnostics table: shown with the analyze runs' new model-level scalars, absent without them
(so a RESULTS.md from runs before them regenerates unchanged)."""

from tests.experiments.test_semantic_vs_random import fake_task, report


def cells(tmp_path, analyze_metrics):
    out = tmp_path / "study"
    for k in (0, 1):
        fake_task(out / "random" / f"seed{k}" / "analyze", {**analyze_metrics(k), "attn/shallow_sink_ratio": 2.0})
    return {"random": [{"analyze": report.read_task(out / "random" / f"seed{k}" / "analyze")} for k in (0, 1)]}


def test_the_table_shows_the_diagnostics_where_present(tmp_path):
    table = report.diagnostics_table(
        cells(tmp_path, lambda k: {"attn/nop_heads": 2.0 + 2 * k, "asym/shallow_sink_ratio": -0.5})
    )
    lines = "\n".join(table).splitlines()
    header = next(ln for ln in lines if ln.startswith("| strategy"))
    assert "NOP heads" in header and "asym: shallow sink ratio" in header and "SI count" not in header
    row = next(ln for ln in lines if ln.startswith("| random"))
    assert "3.00 ± 1.41" in row and "-0.500 ± 0.000" in row


def test_no_diagnostics_no_table(tmp_path):
    assert report.diagnostics_table(cells(tmp_path, lambda k: {})) == []
