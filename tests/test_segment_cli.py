"""semmae-segment's bad input: one line on stderr, exit code 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args,needles",
    [
        ([], ["no pretraining checkpoint", "make pretrain", "ckpt=null"]),
        (["dataset=fashion_mnist", "ckpt=null"], ["no label maps", "fashion_mnist_seg"]),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, needles):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "PROJECT_ROOT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "semmae.segment", *args, "logger=none"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("semmae-segment: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
