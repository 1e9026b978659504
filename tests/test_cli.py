"""Bad input gives one clear line on stderr and a non-zero exit, and writes nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(args, cwd, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "semmae.pretrain", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


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


def last_line(text: str) -> str:
    """The last line a log shows: progress bars redraw with carriage returns, so those end lines too."""
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip()][-1]


def test_an_error_during_training_is_the_last_line_of_the_log(tmp_path, fmnist_root):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "semmae.pretrain",
            "logger=none",
            f"dataset.root={fmnist_root}",
            "dataset.train_subset=512",
            "dataset.val_subset=64",
            "dataset.batch_size=32",
            "trainer.max_epochs=1",
            "backbone.depth=1",
            "model.optim.blr=1e12",
            "model.optim.warmup_epochs=0",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stdout[-2000:]
    assert last_line(proc.stdout).startswith("semmae-pretrain: error: training diverged"), proc.stdout[-2000:]


@pytest.mark.parametrize("requeue", ["auto", "true"])
def test_sigterm_mid_epoch_saves_and_says_how_to_resume(tmp_path, fmnist_root, requeue):
    import signal
    import threading
    import time

    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "semmae.pretrain",
            "logger=none",
            f"dataset.root={fmnist_root}",
            "dataset.train_subset=600",
            "dataset.val_subset=64",
            "dataset.batch_size=8",
            "trainer.max_epochs=50",
            "backbone.depth=1",
            f"callbacks.requeue.enabled={requeue}",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seen = bytearray()

    def read():
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + 240
    while b"Epoch 1:" not in seen and time.time() < deadline and proc.poll() is None:  # mid-run, past a checkpoint
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=240)
    reader.join(timeout=10)
    log = seen.decode(errors="replace")
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    assert "Traceback" not in log
    line = last_line(log)
    assert line.startswith("semmae-pretrain: error: stopped by SIGTERM at step "), log[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert f"its last checkpoint is {ckpt}: resume with ckpt_path={ckpt} hydra.run.dir={run}" in line
    assert json.loads((run / "failed.json").read_text())["type"] == "StoppedError"
    import torch

    assert torch.load(ckpt, weights_only=True)["epoch"] >= 1
