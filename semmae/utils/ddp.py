"""Multi-process DDP under Hydra. Lightning starts ranks 1..N-1 of a local DDP run by re-running the command line
(sys.argv) with hydra.run.dir=<the run dir>. In a multirun job that command is the whole sweep (-m and the comma
lists) and the run dir is the unused single-run template, so the other ranks would start a new sweep elsewhere.
`rerun_this_job` makes the command re-run exactly this job, in this job's directory. On SLURM, srun starts every
rank itself and none of this applies."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


def job_argv(argv0: str, task_overrides: list[str]) -> list[str]:
    """The command line of one job: the entry point and the job's own overrides (no -m, no sweep lists)."""
    return [argv0, *task_overrides]


@contextlib.contextmanager
def rerun_this_job() -> Iterator[None]:
    """While active, sys.argv and hydra.run.dir describe the current multirun job (no-op in a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hydra_cfg = HydraConfig.get()
    saved_argv, saved_dir = sys.argv, hydra_cfg.run.dir
    sys.argv = job_argv(sys.argv[0], list(hydra_cfg.overrides.task))
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        with read_write(hydra_cfg.run):
            hydra_cfg.run.dir = saved_dir
