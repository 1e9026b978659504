"""Every masking strategy runs in the pretraining task from the command line, segment maps included, and sweeps
over strategies and ratios run one job per combination."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semmae.cli.pretrain import run
from tests.tasks.test_pretrain import TINY

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "overrides",
    [
        ["masking=semantic", "masking.segmenter=given", "dataset.segments=foreground"],  # resident maps
        ["masking=semantic", "masking.segmenter=slic", "dataset.num_workers=0"],  # worker hook, resident switched off
    ],
    ids=["given", "slic"],
)
def test_semantic_segmenters_that_need_data_train(compose_cfg, fmnist_root, overrides):
    cfg = compose_cfg("pretrain", ["debug=fast_dev_run", f"dataset.root={fmnist_root}", *TINY, *overrides])
    metrics = run(cfg)
    assert metrics["val/loss"] > 0
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["config"]["masking"]["segmenter"] == overrides[1].split("=")[1]


@pytest.mark.slow
def test_sweep_over_strategies_and_ratios_runs_six_jobs(fmnist_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    args = [
        "-m",
        "masking=random,semantic",
        "masking.mask_ratio=0.6,0.75,0.9",
        "debug=fast_dev_run",
        f"dataset.root={fmnist_root}",
        *TINY,
        "hydra.sweep.dir=sweep",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "semmae.pretrain", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(jobs) == 6
    seen = {
        (r["config"]["masking"]["_target_"].rsplit(".", 1)[1], r["config"]["masking"]["mask_ratio"])
        for r in (json.loads(p.read_text()) for p in jobs)
    }
    assert seen == {(s, r) for s in ("RandomMasking", "SemanticMasking") for r in (0.6, 0.75, 0.9)}
