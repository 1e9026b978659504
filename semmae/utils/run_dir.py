"""One run per run directory. A run started into a directory that holds another run's results or checkpoints would
replace its records (results.json, .hydra/, figures) while Lightning versions the checkpoints beside the old ones
(last-v1.ckpt), so last.ckpt, ckpt=latest and the resume command would pick the old weights while every record
describes the new run. RunDirGuard (a Hydra callback, conf/hydra/default.yaml) runs before Hydra writes anything:

- a directory holding another run is refused with one line, unless the run resumes it (ckpt_path inside it, or a
  requeued SLURM job) or the user typed overwrite=true, which removes the old run's files first;
- the directory is locked (flock on <dir>/.semmae.lock) for the life of the process, so a second run started into
  it while the first is still going is refused too.

A sweep's directory is checked the same way as a whole. DDP ranks > 0, which Lightning starts by re-running the
command into the same directory, are rank 0's run and skip the guard."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from semmae.errors import ConfigError

LOCK_NAME = ".semmae.lock"
_held: dict[str, Any] = {}  # run directory -> its open lock file, held until the process exits


def previous_run(run_dir: Path) -> list[str]:
    """What in run_dir shows that a run already used it: its results and its checkpoints."""
    found = [name for name in ("results.json",) if (run_dir / name).is_file()]
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint{'s' if len(ckpts) > 1 else ''} in checkpoints/")
    return found


def is_resume(run_dir: Path, ckpt_path: Any) -> bool:
    from semmae.utils.slurm import restart_count

    if restart_count() > 0:  # a requeued SLURM job comes back into its own directory
        return True
    if ckpt_path is None:
        return False
    try:
        return Path(str(ckpt_path)).resolve().is_relative_to(run_dir.resolve())
    except OSError:
        return False


def clear_run(run_dir: Path) -> None:
    """overwrite=true: remove the earlier run's files (everything but the lock)."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def lock(run_dir: Path) -> None:
    """Hold an exclusive lock on run_dir until the process exits; ConfigError if another process holds it."""
    key = str(run_dir.resolve())
    if key in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / LOCK_NAME, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        owner = fh.read().strip() or "another process"
        fh.close()
        raise ConfigError(f"{run_dir} is in use by another semmae run ({owner}): wait for it to end, or choose "
                          "another directory (hydra.run.dir=...)") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    fh.flush()
    _held[key] = fh


def claim(run_dir: Path, ckpt_path: Any = None, overwrite: bool = False, what: str = "hydra.run.dir") -> None:
    """Refuse run_dir if it holds another run (see the module docstring), else lock it (clearing it first when
    overwrite); the check and the clearing happen under the lock."""
    lock(run_dir)
    found = previous_run(run_dir) if what == "hydra.run.dir" else sweep_jobs(run_dir)
    if not found or is_resume(run_dir, ckpt_path):
        return
    if overwrite:
        clear_run(run_dir)
        print(f"overwrite=true: removed the earlier run's files from {run_dir}", flush=True)
        return
    resume = f", resume it with ckpt_path={run_dir}/checkpoints/last.ckpt" if what == "hydra.run.dir" else ""
    raise ConfigError(f"{what}={run_dir} holds another run ({', '.join(found)}): choose another directory{resume}, "
                      "or add overwrite=true to replace it")


def sweep_jobs(sweep_dir: Path) -> list[str]:
    """The job directories of an earlier sweep in sweep_dir that hold a run."""
    if not sweep_dir.is_dir():
        return []
    jobs = [d.name for d in sorted(sweep_dir.iterdir()) if d.is_dir() and previous_run(d)]
    return [f"jobs {', '.join(jobs[:5])}{' ...' if len(jobs) > 5 else ''}"] if jobs else []


def _rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import _get_rank

    return (_get_rank() or 0) == 0


class Refused(BaseException):
    """Carries the guard's ConfigError past Hydra, which turns an Exception raised in a callback into a warning;
    the entry point (semmae.cli.entry) reports the ConfigError it was raised from as one line, exit code 2."""


class RunDirGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(Path(str(config.hydra.run.dir)), config.get("ckpt_path"), config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(Path(str(config.hydra.sweep.dir)), None, config, "hydra.sweep.dir")

    @staticmethod
    def _claim(run_dir: Path, ckpt_path: Any, config: DictConfig, what: str) -> None:
        if not _rank_zero():
            return
        try:
            claim(run_dir, ckpt_path, bool(config.get("overwrite", False)), what)
        except ConfigError as err:
            raise Refused(str(err)) from err
