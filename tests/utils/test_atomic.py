"""Atomic writes: a writer killed mid-file leaves the previous file whole (also with $TMPDIR on another
filesystem, which Lightning's own writer copies across), its temp file is removed by the next write, and every
checkpoint a run writes goes through it."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from semmae.utils.atomic import atomic_write, atomic_write_json, remove_stale_temps
from semmae.utils.checkpoint_io import AtomicCheckpointIO

REPO = Path(__file__).resolve().parents[2]

KILL_MID_SAVE = """
import os, signal, sys, torch
from semmae.utils.checkpoint_io import AtomicCheckpointIO
path = sys.argv[1]
io = AtomicCheckpointIO()
io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)          # the good checkpoint
real_save = torch.save
def save_then_die(obj, fh, *a, **k):                                   # the next save is killed half-way
    fh.write(b"PK" + b"x" * 200_000)
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_then_die
io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
"""


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    other_fs = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path / "tmpdir"
    tmpdir = other_fs / f"semmae-test-{os.getpid()}"
    tmpdir.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmpdir)}
    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(path)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.ones(1000))  # whole, and the old one
    leaked = list(path.parent.glob(".last.ckpt.*.tmp"))
    assert len(leaked) == 1 and leaked[0].stat().st_size > 100_000  # the killed writer's partial file
    assert not list(tmpdir.iterdir())  # nothing was staged in $TMPDIR
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)
    assert torch.load(path, weights_only=True)["step"] == 3
    assert not list(path.parent.glob(".last.ckpt.*.tmp"))  # the next write cleaned it up
    tmpdir.rmdir()


def test_a_failed_write_leaves_no_temp_file_and_the_old_content(tmp_path):
    path = atomic_write_json(tmp_path / "results.json", {"a": 1})

    def fail(fh):
        fh.write(b"{partial")
        raise RuntimeError("disk full")

    try:
        atomic_write(path, fail)
    except RuntimeError:
        pass
    assert path.read_text().strip() == '{\n  "a": 1\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_temp_files_of_live_writers_are_kept(tmp_path):
    path = tmp_path / "x.json"
    mine = path.with_name(f".x.json.{os.uname().nodename}.{os.getppid()}.tmp")  # a live process: the parent
    dead = path.with_name(f".x.json.{os.uname().nodename}.999999999.tmp")
    elsewhere = path.with_name(".x.json.another-host.1.tmp")
    for p in (mine, dead, elsewhere):
        p.write_text("partial")
    assert remove_stale_temps(path) == [dead]
    assert mine.exists() and elsewhere.exists()


def test_runs_write_their_checkpoints_through_it(compose_cfg, fmnist_root):
    from semmae.cli.run_steps import build_trainer

    cfg = compose_cfg("pretrain", [f"dataset.root={fmnist_root}", "logger=none"])
    trainer, _ = build_trainer(cfg)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
