"""A local sweep runs its jobs in one process: each job must get its own W&B run, finished when the job ends."""

from pathlib import Path

import pytest

from semmae.cli import task_wrapper


def test_each_job_of_a_sweep_gets_and_closes_its_own_wandb_run(compose_cfg, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = []

    def job(cfg):
        run = wandb.init(project="semmae-test", dir=str(tmp_path), mode="offline")
        runs.append(run.id)
        if len(runs) == 2:
            raise RuntimeError("second job fails")
        return {}

    wrapped = task_wrapper(job, "semmae-test")
    wrapped(compose_cfg("pretrain", [], tmp_path / "0"))
    assert wandb.run is None
    with pytest.raises(RuntimeError):  # a failed job closes its run too (and records failed.json)
        wrapped(compose_cfg("pretrain", [], tmp_path / "1"))
    assert wandb.run is None and len(set(runs)) == 2
    assert (Path(tmp_path / "1") / "failed.json").is_file()
