"""RequeueOnSignal in one process: the signal is acted on at the next step (save last.ckpt, requeue, exit), and the
requeued run resumes from that checkpoint at the same step. The multi-rank version runs on a real SLURM in
tests/slurm/run.sh."""

import os
import signal

import lightning as L
import pytest
import torch

from semmae.callbacks.requeue import Requeued, RequeueOnSignal
from semmae.cli.pretrain import run
from semmae.errors import StoppedError
from semmae.utils import slurm
from tests.tasks.test_pretrain import TINY


class SignalAt(L.Callback):
    """Sends a signal to this process at the start of a given training batch (as SLURM would, mid-step)."""

    def __init__(self, step: int, signum: str = "SIGUSR2"):
        self.step, self.signum = step, getattr(signal, signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class FirstStep(L.Callback):
    seen: list = []

    def on_train_start(self, trainer, pl_module):
        FirstStep.seen.append(trainer.global_step)


def common(fmnist_root):
    return [
        f"dataset.root={fmnist_root}",
        *TINY,
        "logger=csv",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1",
        "callbacks.reconstruction.num_images=2",
        "callbacks.requeue.enabled=true",
        "callbacks.requeue.check_every_n_steps=1",
    ]


def test_signal_saves_requeues_and_the_requeued_run_resumes(compose_cfg, fmnist_root, tmp_path, monkeypatch):
    requests = []
    monkeypatch.setattr(slurm, "request_requeue", lambda signum, previous: requests.append(signum))
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    before = signal.getsignal(signal.SIGUSR2)
    cfg = compose_cfg(
        "pretrain",
        [*common(fmnist_root), f"+callbacks.signal._target_={__name__}.SignalAt", "+callbacks.signal.step=5"],
        tmp_path / "run",
    )
    with pytest.raises(Requeued):
        run(cfg)
    assert requests == [signal.SIGUSR2]
    assert signal.getsignal(signal.SIGUSR2) == before  # handlers restored on the way out
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]  # no .part left
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 6  # the step during which the signal came in, completed
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "failed.json").exists()

    # the requeued job: same run directory and overrides, SLURM_RESTART_COUNT=1
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    FirstStep.seen = []
    cfg = compose_cfg(
        "pretrain", [*common(fmnist_root), f"+callbacks.first._target_={__name__}.FirstStep"], tmp_path / "run"
    )
    metrics = run(cfg)
    assert FirstStep.seen == [6]
    final = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 8 and final["epoch"] == 1 and "val/loss" in metrics
    assert (tmp_path / "run" / "results.json").is_file()


def test_a_signal_in_an_epochs_last_step_waits_for_the_epoch_end(compose_cfg, fmnist_root, tmp_path, monkeypatch):
    """Handed over at the epoch's last step, the resumed run would skip that epoch's validation and checkpoint
    (Lightning resumes such a checkpoint in the next epoch): the hand-over waits for the next step boundary."""
    monkeypatch.setattr(slurm, "request_requeue", lambda signum, previous: None)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    cfg = compose_cfg(
        "pretrain",
        [*common(fmnist_root), f"+callbacks.signal._target_={__name__}.SignalAt", "+callbacks.signal.step=7"],
        tmp_path / "run",
    )  # step 8 ends epoch 1 (4 each)
    cfg.trainer.max_epochs = 3
    with pytest.raises(Requeued):
        run(cfg)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch_000.ckpt", "epoch_001.ckpt", "last.ckpt"]
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 9 and saved["epoch"] == 2  # one step into epoch 2, after epoch 1 ended whole


def test_sigterm_saves_and_stops_without_requeue(compose_cfg, fmnist_root, tmp_path, monkeypatch):
    requests = []
    monkeypatch.setattr(slurm, "request_requeue", lambda signum, previous: requests.append(signum))
    before = signal.getsignal(signal.SIGTERM)
    cfg = compose_cfg(
        "pretrain",
        [
            *common(fmnist_root),
            f"+callbacks.signal._target_={__name__}.SignalAt",
            "+callbacks.signal.step=1",
            "+callbacks.signal.signum=SIGTERM",
        ],
        tmp_path / "run",
    )
    with pytest.raises(StoppedError, match=r"stopped by SIGTERM at step 2 .*resume with ckpt_path=\S+last.ckpt") as err:
        run(cfg)
    assert err.value.exit_code == 128 + signal.SIGTERM
    assert requests == []
    assert signal.getsignal(signal.SIGTERM) == before
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2


def test_outside_slurm_it_handles_only_sigterm(monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    before = signal.getsignal(signal.SIGUSR2)
    cb = RequeueOnSignal()
    cb.setup(None, None, "fit")
    cb.on_train_start(None, None)
    try:
        assert signal.getsignal(signal.SIGUSR2) == before and signal.getsignal(signal.SIGTERM) == cb._handler
    finally:
        cb.teardown(None, None, "fit")

    monkeypatch.setenv("SLURM_JOB_ID", "9")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "pretrain")
    cb.setup(None, None, "fit")
    cb.on_train_start(None, None)
    try:
        assert cb._armed and signal.getsignal(signal.SIGUSR2) == cb._handler
        os.kill(os.getpid(), signal.SIGUSR2)
        assert cb.received == 2  # a flag only; the work happens at the next step boundary
    finally:
        cb.teardown(None, None, "fit")
    assert signal.getsignal(signal.SIGUSR2) == before
