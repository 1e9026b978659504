"""semmae-report on a fabricated multirun directory in Hydra's layout: finished, failed and unfinished jobs."""

import csv
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from semmae.analysis.sweep_table import collect, series
from semmae.cli.sweep_report import main, write_sweep_report

TARGETS = {"random": "semmae.masking.random.RandomMasking", "semantic": "semmae.masking.semantic.SemanticMasking"}


def fake_job(root: Path, num: int, strategy: str, ratio: float, *, metrics=None, error=None, seed=None) -> Path:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    overrides = [f"masking={strategy}", f"masking.mask_ratio={ratio}", "trainer.max_epochs=2"]
    if seed is not None:
        overrides.append(f"seed={seed}")
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"masking": {"_target_": TARGETS[strategy], "mask_ratio": ratio}, "seed": seed or 0}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"masking": strategy}}}})
    )
    if metrics is not None:
        (job / "results.json").write_text(
            json.dumps(
                {
                    "task": "pretrain",
                    "metrics": metrics,
                    "checkpoint": str(job / "checkpoints" / "last.ckpt"),
                    "wandb_run": None,
                    "epochs": 2,
                    "global_step": 40,
                    "wall_time_s": 12.5,
                    "config": config,
                }
            )
        )
    if error is not None:
        (job / "failed.json").write_text(json.dumps({"error": error, "type": "RuntimeError", "traceback": "..."}))
    return job


def metrics(acc, loss, sink=None):
    out = {"val/online_probe_acc": acc, "val/loss": loss, "train/loss_epoch": loss + 0.1, "train/online_probe_acc": acc}
    if sink is not None:
        out.update({"attn/shallow_sink_ratio": sink, "attn/sink_ratio/block_0": sink + 1})
    return out


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multirun" / "pretrain" / "2026-11-27_10-00-00"
    fake_job(root, 0, "random", 0.5, metrics=metrics(0.70, 0.50, sink=3.0))
    fake_job(root, 1, "random", 0.75, metrics=metrics(0.72, 0.60, sink=3.5))
    fake_job(root, 2, "random", 0.9, metrics=metrics(0.65, 0.70, sink=4.0))
    fake_job(root, 3, "semantic", 0.5, error="CUDA out of memory | in block 3")
    fake_job(root, 4, "semantic", 0.75, metrics=metrics(0.74, 0.55, sink=2.0))
    fake_job(root, 5, "semantic", 0.9)  # neither results.json nor failed.json: still running, or killed
    # a job that failed once, then was requeued and finished: the newer file wins
    job = fake_job(root, 10, "semantic", 0.9, metrics=metrics(0.60, 0.80, sink=2.5), error="pre-empted")
    old = time.time() - 60
    os.utime(job / "failed.json", (old, old))
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_collect_reads_every_job_in_numeric_order(sweep):
    jobs = collect(sweep)
    assert [j.name for j in jobs] == ["0", "1", "2", "3", "4", "5", "10"]
    assert [j.status for j in jobs] == ["ok", "ok", "ok", "failed", "ok", "incomplete", "ok"]
    assert jobs[3].error == "CUDA out of memory | in block 3" and jobs[3].strategy == "semantic"
    assert jobs[3].mask_ratio == 0.5 and jobs[0].metrics["attn/shallow_sink_ratio"] == 3.0


def test_report_writes_csv_markdown_and_plot(sweep):
    out = write_sweep_report(sweep)
    assert set(out) == {"csv", "md", "png"} and all(p.parent == sweep for p in out.values())

    rows = list(csv.DictReader(open(out["csv"])))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "5", "10"]
    header = list(rows[0])
    assert header[:4] == ["job", "status", "masking", "mask_ratio"]
    assert {
        "val/online_probe_acc",
        "val/loss",
        "train/loss_epoch",
        "attn/shallow_sink_ratio",
        "attn/sink_ratio/block_0",
    } <= set(header)
    assert float(rows[4]["val/online_probe_acc"]) == pytest.approx(0.74)
    failed = rows[3]
    assert failed["status"] == "failed" and failed["error"] == "CUDA out of memory | in block 3"
    assert failed["val/loss"] == "" and "masking=semantic" in failed["overrides"]
    assert rows[5]["status"] == "incomplete"

    md = out["md"].read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 7  # header + one row per job
    assert "| 3 | failed | semantic | 0.5 |" in md and "CUDA out of memory \\| in block 3" in md
    assert "| 4 | ok | semantic | 0.75 | 74.00% |" in md
    assert "7 jobs: 5 ok, 2 failed or incomplete." in md
    assert "attn/shallow_sink_ratio" in table[0] and "block_0" not in table[0]  # per-block values stay in the CSV
    assert "`sweep.csv` has every metric of every block" in md

    png = out["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_plot_has_one_line_per_strategy_over_mask_ratio(sweep):
    jobs = collect(sweep)
    acc = series(jobs, "val/online_probe_acc")
    assert set(acc) == {"random", "semantic"}
    assert acc["random"] == ([0.5, 0.75, 0.9], [0.70, 0.72, 0.65])
    assert acc["semantic"] == ([0.75, 0.9], [0.74, 0.60])  # the failed and the unfinished job are not points
    assert set(series(jobs, "attn/shallow_sink_ratio")) == {"random", "semantic"}


def test_other_swept_overrides_become_columns_and_lines(tmp_path):
    root = tmp_path / "sweep"
    for num, (ratio, seed) in enumerate([(0.5, 1), (0.5, 2), (0.75, 1), (0.75, 2)]):
        fake_job(root, num, "random", ratio, metrics=metrics(0.5 + num / 100, 0.5), seed=seed)
    out = write_sweep_report(root)
    header = next(csv.reader(open(out["csv"])))
    assert "seed" in header and "trainer.max_epochs" not in header  # only the overrides that vary
    assert set(series(collect(root), "val/loss")) == {"random (seed=1)", "random (seed=2)"}


def test_cli_prints_the_table_and_rejects_a_directory_without_jobs(sweep, capsys):
    main([str(sweep)])
    printed = capsys.readouterr().out
    assert "| 3 | failed |" in printed and str(sweep / "sweep.png") in printed
    with pytest.raises(SystemExit) as exc:
        main([str(sweep.parent)])  # multirun/pretrain: the sweeps are one level down
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semmae-report: error: no sweep jobs") and str(sweep) in err[0]


def test_corrupt_records_are_named_not_a_traceback(tmp_path, capsys):
    root = tmp_path / "sweep"
    fake_job(root, 0, "random", 0.5, metrics=metrics(0.70, 0.50))
    bad = fake_job(root, 1, "random", 0.75, metrics=metrics(0.72, 0.60))
    (bad / "results.json").write_text(json.dumps({"task": "pretrain", "metrics": "notadict"}))
    cut = fake_job(root, 2, "random", 0.9, metrics=metrics(0.72, 0.60))
    text = (cut / "results.json").read_text()
    (cut / "results.json").write_text(text[: len(text) // 2])  # a copy cut short
    main([str(root)])
    jobs = {j.name: j for j in collect(root)}
    assert jobs["0"].status == "ok"
    assert (
        jobs["1"].status == "corrupt"
        and jobs["1"].error == "results.json is corrupt: its metrics are a str, not a table"
    )
    assert jobs["2"].status == "corrupt" and "results.json is corrupt: not valid JSON" in jobs["2"].error
    table = (root / "sweep.md").read_text()
    assert "| corrupt |" in table and "truncated or damaged" in table
