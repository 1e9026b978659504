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
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "is in use by another semmae run (pid" in proc.stderr, proc.stderr


def test_the_cli_refuses_with_one_line_before_hydra_writes_anything(tmp_path):
    run = finished_run(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "semmae.pretrain", "logger=none", f"hydra.run.dir={run}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("semmae-pretrain: error: hydra.run.dir=") and "holds another run" in lines[0]
    assert (run / ".hydra" / "config.yaml").read_text() == "old: config\n"  # Hydra's records were not replaced
    assert (run / "results.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
