"""The SLURM launcher config (with and without the slurm extra), requeue requests and the resume lookup.
The real cluster test is tests/slurm/run.sh (`make test-slurm`)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from semmae.utils import slurm

REPO = Path(__file__).resolve().parents[2]


def launcher_cfg(compose_cfg, *overrides):
    cfg = compose_cfg("pretrain", ["hydra/launcher=slurm", *overrides])
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.fixture
def slurm_on_path(monkeypatch):
    """As on a login node: sbatch and srun found (the launcher's target checks for them, nothing here runs them)."""
    real_which = slurm.shutil.which
    monkeypatch.setattr(
        slurm.shutil,
        "which",
        lambda cmd, *a, **k: f"/usr/bin/{cmd}" if cmd in ("sbatch", "srun") else real_which(cmd, *a, **k),
    )


def test_launcher_follows_the_trainer_and_the_environment(compose_cfg, monkeypatch, slurm_on_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("SLURM_ACCOUNT", "proj42")
    ddp = launcher_cfg(compose_cfg, "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    assert ddp["_target_"] == slurm.SUBMITIT_LAUNCHER
    assert (ddp["nodes"], ddp["tasks_per_node"], ddp["gpus_per_node"]) == (2, 4, 4)
    assert (ddp["partition"], ddp["account"]) == ("gpu-long", "proj42")
    assert ddp["timeout_min"] > 0 and ddp["max_num_timeout"] > 0  # requeue after a time-out: runs resume

    cpu = launcher_cfg(compose_cfg, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert (cpu["nodes"], cpu["tasks_per_node"], cpu["gpus_per_node"]) == (1, 2, None)
    monkeypatch.delenv("SLURM_PARTITION")
    one = launcher_cfg(compose_cfg, "trainer=gpu")  # trainer/gpu has no num_nodes: one node
    assert (one["nodes"], one["tasks_per_node"], one["gpus_per_node"], one["partition"]) == (1, 1, 1, None)


def test_launcher_config_is_what_submitit_accepts(compose_cfg, tmp_path, monkeypatch, slurm_on_path):
    """Every key is one the plugin knows, and submitit turns them into the sbatch lines a DDP job needs."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf

    monkeypatch.setenv("SLURM_PARTITION", "a100")
    params = launcher_cfg(compose_cfg, "trainer=ddp", "trainer.devices=4")
    assert set(params) == set(OmegaConf.structured(SlurmQueueConf).keys())
    OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), params)  # types check too

    # the parameter split the plugin does before it calls submitit. Writing the sbatch text needs no cluster:
    # submitit's srun detection is the only part that does, so it is answered here (make test-slurm runs the real one)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params["max_num_timeout"])
    executor.update_parameters(
        **{
            k if k in base else f"slurm_{k}": v
            for k, v in params.items()
            if k not in ("_target_", "submitit_folder", "max_num_timeout")
        }
    )
    sbatch = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in (
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--nodes=1",
        "--partition=a100",
        "--signal=USR2@120",
        "--time=240",
        "--cpus-per-task=4",
    ):
        assert f"#SBATCH {line}" in sbatch, (line, sbatch)


HIDE_EXTRA = """
import hydra_plugins, os, sys
# as if hydra-submitit-launcher were not installed: drop its folder from the plugin namespace
hydra_plugins.__path__ = [
    p for p in hydra_plugins.__path__ if not os.path.isdir(os.path.join(p, "hydra_submitit_launcher"))
]
"""


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_slurm_sweep_without_slurm_stops_with_one_line(tmp_path):
    """On a machine without sbatch/srun (a laptop, CI before make test-slurm), hydra/launcher=slurm says so."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "semmae.pretrain",
            "-m",
            "hydra/launcher=slurm",
            "logger=none",
            "masking.mask_ratio=0.5,0.75",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "sbatch and srun not found on PATH" in lines[0] and "login node" in lines[0], lines[0]
    assert not list(tmp_path.rglob("results.json"))


def test_without_the_extra_the_config_composes_and_a_sweep_stops_with_one_line(tmp_path):
    code = (
        HIDE_EXTRA
        + """
import importlib.util
assert importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None
from pathlib import Path
from tests.conftest import compose
cfg = compose("pretrain", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=2"], Path("run"))
assert cfg.hydra.launcher.tasks_per_node == 2  # composes; only building the launcher needs the extra
print("composed")
sys.argv = ["semmae-pretrain", "-m", "hydra/launcher=slurm", "logger=none", "masking.mask_ratio=0.5,0.75"]
from semmae.cli.pretrain import main
main()
"""
    )
    proc = run_python(code, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "composed" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("semmae-pretrain: error: hydra/launcher=slurm needs hydra-submitit-launcher")
    assert "pip install 'semmae[slurm]'" in lines[0]
    assert not list(tmp_path.rglob("results.json"))


def test_gpus_per_node_needs_a_device_count():
    assert slurm.slurm_gpus_per_node("cpu", 2) is None
    assert slurm.slurm_gpus_per_node("auto", "8") == 8
    with pytest.raises(slurm.ConfigError, match="trainer.devices"):
        slurm.slurm_gpus_per_node("gpu", "auto")


# --- requeue requests --------------------------------------------------------------------------------------------
def test_requeue_through_scontrol_names_the_array_task(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "120")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "117")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    assert slurm.request_requeue(signal.SIGUSR1, None, run=fake_run) is None
    assert calls == [["scontrol", "requeue", "117_3"]]

    def refused(cmd, **kw):
        return SimpleNamespace(returncode=1, stdout="", stderr="Requested operation is presently disabled\n")

    assert "presently disabled" in slurm.request_requeue(signal.SIGUSR1, None, run=refused)
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert "not a SLURM job" in slurm.request_requeue(signal.SIGUSR1, None, run=fake_run)


class Checkpointable:
    """Stands for the Hydra launcher that submitit runs (it has checkpoint(): resubmit the same job)."""

    def __call__(self):
        return "done"

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submitit_signal_handler(tmp_path, countdown):
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission, JobPaths

    env = SimpleNamespace(global_rank=0, requeued=[])
    env._requeue = env.requeued.append
    delayed = DelayedSubmission(Checkpointable())
    delayed.set_timeout(60, countdown)
    paths = JobPaths(tmp_path, job_id="55")
    return SignalHandler(env, paths, delayed), env, paths


def test_requeue_through_submitit_repickles_the_job(tmp_path):
    pytest.importorskip("submitit")
    handler, env, paths = submitit_signal_handler(tmp_path, countdown=3)
    assert slurm.submitit_handler(handler.checkpoint_and_try_requeue) is handler
    assert slurm.request_requeue(signal.SIGUSR2, handler.checkpoint_and_try_requeue) is None
    assert env.requeued == [3] and paths.submitted_pickle.is_file()  # the requeued job reruns this pickle

    handler, env, _ = submitit_signal_handler(tmp_path, countdown=-1)  # time-outs used up
    why = slurm.request_requeue(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    assert "timed-out too many times" in why and env.requeued == []


# --- resuming -----------------------------------------------------------------------------------------------------
def test_resume_checkpoint_only_in_a_requeued_job(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    (run / "failed.json").write_text("{}")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert slurm.resume_checkpoint(run, None) is None  # a fresh run never picks up old files
    assert slurm.resume_checkpoint(run, "/explicit.ckpt") == "/explicit.ckpt"

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert slurm.resume_checkpoint(run, None) == str(last)
    assert not (run / "failed.json").exists()  # the interrupted attempt's failure no longer describes the run
    hpc = run / "hpc_ckpt_1.ckpt"  # Lightning's own requeue checkpoint, newer
    hpc.write_bytes(b"y")
    old = time.time() - 100
    os.utime(last, (old, old))
    assert slurm.resume_checkpoint(run, None) == str(hpc)
    assert slurm.resume_checkpoint(tmp_path / "empty", None) is None
