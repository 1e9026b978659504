"""SLURM plumbing: the resolvers that fill conf/hydra/launcher/slurm.yaml, asking SLURM to requeue the running job,
and finding the checkpoint that a requeued job resumes from. The training-side half (catching the signal, saving
last.ckpt at a step boundary) is semmae.callbacks.requeue.RequeueOnSignal."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semmae.errors import ConfigError

SUBMITIT_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
MISSING_EXTRA = (
    "hydra/launcher=slurm needs hydra-submitit-launcher, which is not installed: "
    "pip install 'semmae[slurm]' (or pip install hydra-submitit-launcher)"
)

NO_SLURM = (
    "hydra/launcher=slurm submits the sweep's jobs to SLURM, but {commands} not found on PATH here: run the sweep "
    "from a SLURM login node, or drop hydra/launcher=slurm to run the jobs on this machine"
)


# --- resolvers for conf/hydra/launcher/slurm.yaml ---------------------------------------------------------------
def slurm_launcher_target() -> str:
    """The launcher's _target_. Resolved only when Hydra builds the launcher, so the config composes without the
    extra; a sweep that uses it without the extra stops with one line that says how to install it."""
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        raise ConfigError(MISSING_EXTRA)
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if missing:
        raise ConfigError(NO_SLURM.format(commands=" and ".join(missing)))
    return SUBMITIT_LAUNCHER


def slurm_gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """GPUs to request per node: one per device unless the trainer runs on CPU processes (then none)."""
    if str(accelerator).lower() == "cpu":
        return None
    try:
        return int(devices)
    except (TypeError, ValueError) as exc:  # devices=auto / -1 / "0,1" cannot size an allocation
        raise ConfigError(
            f"trainer.devices={devices!r}: on SLURM give the number of devices per node (an int), "
            "or set hydra.launcher.gpus_per_node and hydra.launcher.tasks_per_node yourself"
        ) from exc


# --- inside a job ---------------------------------------------------------------------------------------------
def in_slurm_job() -> bool:
    """True inside a SLURM batch job or step that Lightning treats as a SLURM cluster (not an interactive shell)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return "SLURM_JOB_ID" in os.environ and SLURMEnvironment.detect()


def restart_count() -> int:
    """How many times SLURM has restarted (requeued) this job: 0 for the first run."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def job_id() -> str | None:
    """The id that scontrol understands: <array job>_<task> for array jobs (submitit sweeps), else the job id."""
    array_id, task_id = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_id and task_id:
        return f"{array_id}_{task_id}"
    return os.environ.get("SLURM_JOB_ID")


def submitit_handler(handler: Any) -> Any | None:
    """submitit's SignalHandler if `handler` is its bound checkpoint-and-requeue method, else None."""
    owner = getattr(handler, "__self__", None)
    if (
        owner is not None
        and type(owner).__module__.startswith("submitit.")
        and hasattr(owner, "checkpoint_and_try_requeue")
    ):
        return owner
    return None


def request_requeue(signum: int, previous_handler: Any = None, run: Callable[..., Any] = subprocess.run) -> str | None:
    """Ask SLURM to requeue this job; returns None when it was requeued, else why not.

    Under submitit, its own handler does it: it re-pickles the job for the rerun (the same Hydra job, same run
    directory), counts time-outs against hydra.launcher.max_num_timeout and calls scontrol requeue. Otherwise
    (a plain sbatch script) this calls `scontrol requeue <job>` itself."""
    owner = submitit_handler(previous_handler)
    if owner is not None:
        try:
            owner.checkpoint_and_try_requeue(signum, None)
        except SystemExit:  # submitit exits the process once the job is requeued; we exit after the other ranks
            return None
        except Exception as exc:  # submitit's UncompletedJobError: time-outs exhausted, or not checkpointable
            return str(exc) or type(exc).__name__
        return "submitit did not requeue the job"
    jid = job_id()
    if jid is None:
        return "not a SLURM job (no SLURM_JOB_ID)"
    try:
        proc = run(["scontrol", "requeue", jid], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"scontrol requeue {jid} failed: {exc}"
    if proc.returncode != 0:
        return f"scontrol requeue {jid} failed: {(proc.stderr or proc.stdout).strip()}"
    return None


def resume_checkpoint(output_dir: str | Path, ckpt_path: str | None) -> str | None:
    """The checkpoint to start from: ckpt_path if given; in a requeued SLURM job (SLURM_RESTART_COUNT > 0), the
    newest of <run>/checkpoints/last.ckpt (written on the requeue signal, or at the last epoch end) and Lightning's
    own <run>/hpc_ckpt_*.ckpt; else None (a fresh run). A resumed job also drops the failed.json that the
    interrupted attempt may have left, since it no longer describes the run."""
    if ckpt_path is not None or restart_count() == 0:
        return ckpt_path
    run_dir = Path(output_dir)
    candidates = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if not candidates:
        print(
            f"requeued job (restart {restart_count()}): no checkpoint in {run_dir}, starting from scratch", flush=True
        )
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    print(f"requeued job (restart {restart_count()}): resuming from {newest}", flush=True)
    if _is_rank_zero():
        (run_dir / "failed.json").unlink(missing_ok=True)
    return str(newest)


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
