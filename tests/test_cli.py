"""Bad input gives one clear line on stderr and a non-zero exit, and writes nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(args, cwd, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "semmae.pretrain", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("semmae-pretrain: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["no_such_option=3"], ["no_such_option", "+no_such_option"]),
        (["masking=nope"], ["masking/nope", "random"]),
        (["masking.mask_ratio=1.5"], ["mask_ratio", "(0, 1)"]),
        (["masking.mask_ratio=0"], ["mask_ratio"]),
        (["backbone.img_size=30"], ["not divisible by patch size", "backbone.img_size"]),
        (["dataset.root=/definitely/missing", "dataset.download=false"], ["dataset-fashion-mnist", "dataset.root"]),
        (["ckpt_path=/no/such.ckpt"], ["ckpt_path", "does not exist"]),
        (["model.optim.blr=-1"], ["model.optim.blr=-1", "> 0"]),
        (["backbone.patch_size=0"], ["backbone.patch_size=0", ">= 1"]),
        (["+model.optim.blrr=1"], ["model.optim.blrr is not a setting", "did you mean model.optim.blr"]),
        (["model.probe.lr=abc"], ["model.probe.lr must be a number"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, needles):
    proc = run_cli([*args, "logger=none"], cwd=tmp_path)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.ckpt"))


def test_existing_run_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "keep"
    run_dir.mkdir()
    (run_dir / "results.json").write_text("precious")
    proc = run_cli(["masking.mask_ratio=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert (run_dir / "results.json").read_text() == "precious"
