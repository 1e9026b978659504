"""One run per run directory: another run's directory is refused before anything in it changes (unless resumed
or overwrite=true), and a directory in use is locked against a second run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from semmae.errors import ConfigError
from semmae.utils import run_dir as guard

REPO = Path(__file__).resolve().parents[2]


def finished_run(path: Path) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "last.ckpt").write_bytes(b"old weights")
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text("old: config\n")
    (path / "results.json").write_text('{"old": true}')
    return path


@pytest.fixture(autouse=True)
def release_locks():
    yield
    for fh in guard._held.values():
        fh.close()
    guard._held.clear()


def test_a_finished_run_is_refused_and_left_as_it_was(tmp_path):
    run = finished_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"holds another run \(results.json, 1 checkpoint in checkpoints/\)") as err:
        guard.claim(run)
    assert "ckpt_path=" in str(err.value) and "overwrite=true" in str(err.value)
    assert (run / "results.json").read_text() == '{"old": true}'


def test_resuming_the_run_or_a_requeued_job_may_use_it(tmp_path, monkeypatch):
    run = finished_run(tmp_path / "run")
    guard.claim(run, ckpt_path=run / "checkpoints" / "last.ckpt")
    guard._held.clear()
    with pytest.raises(ConfigError):  # resuming *another* run's checkpoint into this directory is not a resume of it
        guard.claim(run, ckpt_path=tmp_path / "elsewhere" / "last.ckpt")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    guard.claim(run)


def test_overwrite_removes_the_old_run_first(tmp_path):
    run = finished_run(tmp_path / "run")
    guard.claim(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [guard.LOCK_NAME]


def test_an_empty_or_failed_directory_is_fine(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "failed.json").write_text("{}")  # a run that stopped at a bad setting, before any checkpoint
    guard.claim(run)


def test_a_sweep_directory_with_finished_jobs_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    finished_run(sweep / "0")
    with pytest.raises(ConfigError, match=r"hydra.sweep.dir=.* holds another run \(jobs 0\)"):
        guard.claim(sweep, what="hydra.sweep.dir")


def test_a_directory_in_use_is_locked_against_a_second_run(tmp_path):
    run = tmp_path / "run"
    guard.claim(run)  # this process is writing into it
    code = f"from pathlib import Path; from semmae.utils.run_dir import claim; claim(Path({str(run)!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "is in use by another semmae run (pid" in proc.stderr, proc.stderr


def test_the_cli_refuses_with_one_line_before_hydra_writes_anything(tmp_path):
    run = finished_run(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "semmae.pretrain", "logger=none", f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("semmae-pretrain: error: hydra.run.dir=") and "holds another run" in lines[0]
    assert (run / ".hydra" / "config.yaml").read_text() == "old: config\n"  # Hydra's records were not replaced
    assert (run / "results.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]


# --- a real run: resume continues *the* run, overwrite removes only what a run writes ----------------------------
TWO_EPOCHS = [
    "logger=none",
    "dataset.train_subset=128",
    "dataset.val_subset=64",
    "dataset.batch_size=64",
    "trainer.max_epochs=2",
    "backbone.depth=2",
    "callbacks.reconstruction.num_images=2",
]


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory, fmnist_root):
    from tests.conftest import run_entry

    run = tmp_path_factory.mktemp("finished") / "run"
    code, err = run_entry("pretrain", [*TWO_EPOCHS, f"dataset.root={fmnist_root}", f"hydra.run.dir={run}"])
    assert code == 0, err
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


def resume(run: Path, fmnist_root: Path, ckpt: Path, *extra: str) -> tuple[int, str]:
    from tests.conftest import run_entry

    return run_entry(
        "pretrain", [*TWO_EPOCHS, f"dataset.root={fmnist_root}", f"ckpt_path={ckpt}", f"hydra.run.dir={run}", *extra]
    )


def test_resuming_a_finished_run_is_refused_and_keeps_its_results(two_epoch_run, fmnist_root, tmp_path):
    from tests.conftest import one_error_line

    run = copy_of(two_epoch_run, tmp_path)
    results = (run / "results.json").read_text()
    code, err = resume(run, fmnist_root, run / "checkpoints" / "last.ckpt")
    assert code == 2
    assert "is the end of a finished run (2 epochs trained, trainer.max_epochs=2)" in one_error_line(
        err, "semmae-pretrain"
    )
    assert (run / "results.json").read_text() == results and not (run / "failed.json").exists()


def test_resuming_past_the_end_elsewhere_is_one_line(two_epoch_run, fmnist_root, tmp_path):
    from tests.conftest import one_error_line

    code, err = resume(
        tmp_path / "new", fmnist_root, two_epoch_run / "checkpoints" / "last.ckpt", "trainer.max_epochs=1"
    )
    assert code == 2
    assert "has trained past its end (2 epochs trained, trainer.max_epochs=1)" in one_error_line(err, "semmae-pretrain")


def test_an_earlier_checkpoint_or_other_settings_do_not_resume_the_run(two_epoch_run, fmnist_root, tmp_path):
    from tests.conftest import one_error_line

    run = copy_of(two_epoch_run, tmp_path)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    config = (run / ".hydra" / "config.yaml").read_text()
    code, err = resume(run, fmnist_root, run / "checkpoints" / "epoch_000.ckpt", "trainer.max_epochs=3")
    assert code == 2 and "is not the last checkpoint of the run" in one_error_line(err, "semmae-pretrain")
    code, err = resume(
        run,
        fmnist_root,
        run / "checkpoints" / "last.ckpt",
        "trainer.max_epochs=3",
        "model.optim.blr=1e-3",
        "masking.mask_ratio=0.5",
    )
    line = one_error_line(err, "semmae-pretrain")
    assert code == 2 and "masking.mask_ratio 0.75 -> 0.5" in line and "model.optim.blr 0.00015 -> 0.001" in line
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert (run / ".hydra" / "config.yaml").read_text() == config


def test_a_resume_with_the_runs_settings_continues_it(two_epoch_run, fmnist_root, tmp_path):
    import json

    import torch

    run = copy_of(two_epoch_run, tmp_path)
    code, err = resume(run, fmnist_root, run / "checkpoints" / "last.ckpt", "trainer.max_epochs=3")
    assert code == 0, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_000.ckpt",
        "epoch_001.ckpt",
        "epoch_002.ckpt",
        "last.ckpt",
    ]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2
    assert json.loads((run / "results.json").read_text())["metrics"]


def test_overwrite_removes_only_what_a_run_writes(two_epoch_run, tmp_path, capsys):
    run = copy_of(two_epoch_run, tmp_path)
    (run / "notes.txt").write_text("mine")
    (run / "my_dataset" / "a").mkdir(parents=True)
    (run / "my_dataset" / "a" / "img.png").write_bytes(b"png")
    guard.claim(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == sorted([guard.LOCK_NAME, "notes.txt", "my_dataset"])
    said = capsys.readouterr().out
    assert "removed the earlier run's .hydra/, checkpoints/, figures/" in said and "results.json" in said
    assert "kept my_dataset/, notes.txt (not written by a run)" in said


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a filesystem mounted read-only (root can write anywhere a chmod forbids)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    (mnt / "old").mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    (mnt / "old").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "--lazy", str(mnt)], check=False)


@pytest.mark.parametrize("existing", [True, False])
def test_a_read_only_run_directory_is_one_line(read_only_dir, fmnist_root, existing):
    from tests.conftest import one_error_line, run_entry

    target = read_only_dir / ("old" if existing else "new")
    code, err = run_entry("pretrain", [*TWO_EPOCHS, f"dataset.root={fmnist_root}", f"hydra.run.dir={target}"])
    assert code == 1
    assert f"hydra.run.dir={target} cannot be written (Read-only file system)" in one_error_line(err, "semmae-pretrain")
