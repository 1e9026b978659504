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


# --- a full disk: one line naming the filesystem, the file and the checkpoint that is still good ------------------
def test_a_full_disk_is_a_storage_error_naming_what_is_kept(tmp_path):
    import errno

    import pytest

    from semmae.errors import StorageError

    target = tmp_path / "results.json"
    target.write_text("old")

    def full(fh):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(
        StorageError, match=rf"no space left on /\S* while writing {target}; the earlier results.json is kept"
    ):
        atomic_write(target, full)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_torch_s_full_disk_error_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    import pytest

    from semmae.errors import StorageError

    (tmp_path / "epoch_000.ckpt").write_bytes(b"good")

    def save(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0\n"
            "PytorchStreamWriter failed writing file data/0: file write failed: No space left on device"
        )

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(StorageError) as err:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1)}, tmp_path / "last.ckpt")
    assert str(err.value).startswith("no space left on ") and err.value.exit_code == 1
    assert f"while writing {tmp_path / 'last.ckpt'}; the last good checkpoint is {tmp_path / 'epoch_000.ckpt'}" in str(
        err.value
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000.ckpt"]


def test_a_run_on_a_full_disk_stops_with_one_line(tmp_path, fmnist_root):
    import pytest

    from tests.conftest import one_error_line, run_entry

    mnt = tmp_path / "small"
    mnt.mkdir()
    # room for the first checkpoint (6.3 MB) and its figures, not for the second
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mnt)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        code, err = run_entry(
            "pretrain",
            [
                "logger=none",
                f"dataset.root={fmnist_root}",
                "dataset.train_subset=128",
                "dataset.val_subset=64",
                "dataset.batch_size=64",
                "trainer.max_epochs=3",
                "backbone.depth=2",
                "callbacks.reconstruction.num_images=2",
                f"hydra.run.dir={mnt / 'run'}",
            ],
        )
        line = one_error_line(err, "semmae-pretrain")
        assert code == 1 and line.startswith(f"semmae-pretrain: error: no space left on {mnt} while writing ")
        good = line.rsplit("; the last good checkpoint is ", 1)[1]
        assert good == str(mnt / "run" / "checkpoints" / "epoch_000.ckpt")
        assert torch.load(good, weights_only=True)["epoch"] == 0  # whole and loadable
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=False)
