"""One run per run directory. A run started into a directory that holds another run's results or checkpoints would
replace its records (results.json, .hydra/, figures) while Lightning versions the checkpoints beside the old ones
(last-v1.ckpt), so last.ckpt, ckpt=latest and the resume command would pick the old weights while every record
describes the new run. RunDirGuard (a Hydra callback, conf/hydra/default.yaml) runs before Hydra writes anything:

- a directory holding another run is refused with one line, unless the run resumes it (a requeued SLURM job, or
  ckpt_path inside it) or the user typed overwrite=true, which removes the old run's files first (only what a run
  writes: a user's own files in the directory stay, and the line says which were removed and which kept);
- a resume continues *the* run: from its last checkpoint and with its settings (.hydra/config.yaml), so that every
  record in the directory describes one history; an earlier checkpoint or changed settings are refused with the
  way to branch into a new directory instead;
- a directory that cannot be created or written (below a file, read-only, not permitted) is one line too;
- the directory is locked (flock on <dir>/.semmae.lock) for the life of the process, so a second run started into
  it while the first is still going is refused too.

A sweep's directory is checked the same way as a whole. DDP ranks > 0, which Lightning starts by re-running the
command into the same directory, are rank 0's run and skip the guard."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from semmae.errors import ConfigError, StorageError

LOCK_NAME = ".semmae.lock"
# What semmae's entry points write into a run directory; overwrite=true removes these and nothing else.
RUN_DIRS = ("checkpoints", "figures", ".hydra", "wandb", "csv", "lightning_logs")
RUN_FILES = (
    "results.json",
    "failed.json",
    "artifacts.json",
    "artifacts.md",
    "attention_blocks.png",
    "cls_attention.png",
    "metrics_vs_depth.png",
    "comparison.json",
    "comparison.md",
    "comparison.png",
    "encoder.pth",
    "sweep.csv",
    "sweep.md",
    "sweep.png",
)
RUN_PATTERNS = (
    re.compile(r"\d+_.+"),  # semmae-analyze's per-encoder folders, <n>_<label>/
    re.compile(r"(semmae-)?[a-z_]+\.log"),  # Hydra's job log, <task>.log
    re.compile(r"\..+\.tmp"),
)  # a killed writer's temp file (semmae.utils.atomic)
# Settings a resume may change: where it starts from, whether it may replace files, and how long the run goes on.
RESUME_FREE = ("ckpt_path", "overwrite", "trust_checkpoint", "trainer.max_epochs", "trainer.max_steps")
_held: dict[str, Any] = {}  # run directory -> its open lock file, held until the process exits


def previous_run(run_dir: Path) -> list[str]:
    """What in run_dir shows that a run already used it: its results and its checkpoints."""
    found = [name for name in ("results.json",) if (run_dir / name).is_file()]
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint{'s' if len(ckpts) > 1 else ''} in checkpoints/")
    return found


def is_requeue() -> bool:
    from semmae.utils.slurm import restart_count

    return restart_count() > 0  # a requeued SLURM job comes back into its own directory


def is_resume(run_dir: Path, ckpt_path: Any) -> bool:
    if is_requeue():
        return True
    if ckpt_path is None:
        return False
    try:
        return Path(str(ckpt_path)).resolve().is_relative_to(run_dir.resolve())
    except OSError:
        return False


def last_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a resume of the run continues from: checkpoints/last.ckpt, else the newest checkpoint."""
    ckpts = run_dir / "checkpoints"
    if (ckpts / "last.ckpt").is_file():
        return ckpts / "last.ckpt"
    found = sorted(ckpts.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if ckpts.is_dir() else []
    return found[-1] if found else None


def flat_settings(node: Any, prefix: str = "") -> dict[str, Any]:
    """A config as {dotted key: value} (lists are values), interpolations unresolved."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat_settings(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def changed_settings(run_dir: Path, config: DictConfig | None) -> list[str]:
    """The settings of config that differ from the run's recorded ones (.hydra/config.yaml), as 'key old -> new'."""
    saved = run_dir / ".hydra" / "config.yaml"
    if config is None or not saved.is_file():
        return []
    old = flat_settings(OmegaConf.to_container(OmegaConf.load(saved), resolve=False))
    new = {
        k: v
        for k, v in flat_settings(OmegaConf.to_container(config, resolve=False)).items()
        if not k.startswith("hydra.")
    }
    keys = sorted(
        k for k in set(old) | set(new) if k not in RESUME_FREE and old.get(k, "(unset)") != new.get(k, "(unset)")
    )
    return [f"{k} {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys]


def trained(ckpt_path: Path, trust: bool = False) -> tuple[int, int] | None:
    """(epochs whose training finished, optimiser steps) recorded in a Lightning checkpoint; None if it holds no
    loop state (semmae.cli.run_steps.check_resume then says what it is)."""
    from semmae.utils.safe_load import load_file

    try:
        ckpt = load_file(ckpt_path, trust=trust, mmap=True)
        epochs = ckpt["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"]
        return int(epochs), int(ckpt.get("global_step", 0))
    except Exception:  # not a training checkpoint, or unreadable: reported with the checkpoint's checks
        return None


def check_not_finished(ckpt_path: Any, config: DictConfig | None) -> None:
    """Resuming a checkpoint whose run already reached trainer.max_epochs (or max_steps) would train nothing and
    rewrite the run's results with none."""
    limits = (
        (OmegaConf.select(config, "trainer.max_epochs"), OmegaConf.select(config, "trainer.max_steps"))
        if config is not None
        else (None, None)
    )
    done = (
        trained(Path(str(ckpt_path)), bool(config.get("trust_checkpoint", False)))
        if any(v is not None for v in limits)
        else None
    )
    if done is None:
        return
    (epochs, steps), (max_epochs, max_steps) = done, limits
    if isinstance(max_epochs, int) and epochs >= max_epochs:
        state = "is the end of a finished run" if epochs == max_epochs else "has trained past its end"
        raise ConfigError(
            f"ckpt_path={ckpt_path} {state} ({epochs} epochs trained, trainer.max_epochs={max_epochs}): "
            f"resuming it would train nothing; to train on, resume with trainer.max_epochs above "
            f"{epochs}, or start a new run"
        )
    if isinstance(max_steps, int) and max_steps > 0 and steps >= max_steps:
        raise ConfigError(
            f"ckpt_path={ckpt_path} has trained {steps} steps, trainer.max_steps={max_steps}: resuming "
            f"it would train nothing; to train on, resume with trainer.max_steps above {steps}"
        )


def check_resume_of(run_dir: Path, ckpt_path: Any, config: DictConfig | None) -> None:
    """A resume into the run's own directory continues the run: its last checkpoint, its settings."""
    if is_requeue():
        return
    last = last_checkpoint(run_dir)
    given = Path(str(ckpt_path)).resolve()
    branch = "or start a new run from it in another directory (hydra.run.dir=NEW)"
    if last is not None and given != last.resolve():
        raise ConfigError(
            f"ckpt_path={ckpt_path} is not the last checkpoint of the run in {run_dir} ({last}): "
            f"resuming from it there would write a second history beside the first; resume from "
            f"ckpt_path={last}, {branch}"
        )
    changed = changed_settings(run_dir, config)
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(
            f"ckpt_path={ckpt_path} resumes the run in {run_dir}, but these settings differ from the "
            f"run's (.hydra/config.yaml): {'; '.join(changed[:3])}{more}; resume with the run's settings "
            f"(its .hydra/overrides.yaml), {branch}"
        )


def is_run_entry(entry: Path) -> bool:
    name = entry.name
    if entry.is_dir() and not entry.is_symlink():
        return name in RUN_DIRS or bool(RUN_PATTERNS[0].fullmatch(name))
    return name in RUN_FILES or any(p.fullmatch(name) for p in RUN_PATTERNS[1:])


def clear_run(run_dir: Path) -> tuple[list[str], list[str]]:
    """overwrite=true: remove what a run writes (RUN_DIRS, RUN_FILES, RUN_PATTERNS); -> (removed, kept) names."""
    removed, kept = [], []
    for entry in sorted(run_dir.iterdir()):
        if entry.name == LOCK_NAME:
            continue
        label = entry.name + ("/" if entry.is_dir() else "")
        if not is_run_entry(entry):
            kept.append(label)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(label)
    return removed, kept


def storage_fault(exc: OSError, path: Path, what: str) -> StorageError:
    """An OSError of creating or writing the run directory as one line."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = {
        errno.ENOSPC: "free some space or choose another directory",
        errno.EROFS: "choose a writable directory",
        errno.EACCES: "choose a directory you may write to",
        errno.EPERM: "choose a directory you may write to",
    }.get(exc.errno, "choose another directory")
    return StorageError(f"{what}={path} cannot be written ({reason}): {hint}")


def below_a_file(path: Path) -> Path | None:
    """The existing file that path would sit below, if any (then it can be neither created nor written)."""
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def lock(run_dir: Path, what: str = "hydra.run.dir") -> None:
    """Hold an exclusive lock on run_dir until the process exits; ConfigError if another process holds it, or if the
    directory cannot be a directory; StorageError if it cannot be created or written."""
    key = str(run_dir.resolve())
    if key in _held:
        return
    blocker = below_a_file(run_dir)
    if blocker is not None:
        where = "is a file" if blocker == run_dir else f"is below the file {blocker}"
        raise ConfigError(f"{what}={run_dir} {where}: a run directory must be a directory; choose another path")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(run_dir / LOCK_NAME, "a+")
    except OSError as exc:
        raise storage_fault(exc, run_dir, what) from None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        owner = fh.read().strip() or "another process"
        fh.close()
        raise ConfigError(
            f"{run_dir} is in use by another semmae run ({owner}): wait for it to end, or choose "
            "another directory (hydra.run.dir=...)"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    fh.flush()
    _held[key] = fh


def claim(
    run_dir: Path,
    ckpt_path: Any = None,
    overwrite: bool = False,
    what: str = "hydra.run.dir",
    config: DictConfig | None = None,
) -> None:
    """Refuse run_dir if it holds another run (see the module docstring), else lock it (clearing it first when
    overwrite); the check and the clearing happen under the lock. config: the new run's composed config, which a
    resume must share with the run it continues."""
    lock(run_dir, what)
    if ckpt_path is not None and not is_requeue():
        check_not_finished(ckpt_path, config)
    found = previous_run(run_dir) if what == "hydra.run.dir" else sweep_jobs(run_dir)
    if not found:
        return
    if is_resume(run_dir, ckpt_path):
        check_resume_of(run_dir, ckpt_path, config)
        return
    if overwrite:
        removed, kept = clear_run(run_dir)
        note = f"; kept {', '.join(kept)} (not written by a run)" if kept else ""
        print(f"overwrite=true: removed the earlier run's {', '.join(removed)} from {run_dir}{note}", flush=True)
        return
    resume = f", resume it with ckpt_path={run_dir}/checkpoints/last.ckpt" if what == "hydra.run.dir" else ""
    raise ConfigError(
        f"{what}={run_dir} holds another run ({', '.join(found)}): choose another directory{resume}, "
        "or add overwrite=true to replace it"
    )


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
            claim(run_dir, ckpt_path, bool(config.get("overwrite", False)), what, config)
        except (ConfigError, StorageError) as err:
            raise Refused(str(err)) from err
