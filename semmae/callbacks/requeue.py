"""Stopping a run on a signal without losing it. SIGTERM (kill, scancel, the end of a pre-emption grace time), in
any run: the run saves checkpoints/last.ckpt at the next training-step boundary (every rank at the same step) and
stops with one line that says where the checkpoint is and how to resume (exit code 128 + 15). Pre-emption and time
limits on SLURM (enabled=auto: inside a SLURM job; true: anywhere): on the requeue signal the run saves the same
way, asks SLURM to requeue the job, and exits; the requeued job finds that checkpoint
(semmae.utils.slurm.resume_checkpoint) and continues at the same optimiser step.

Signals: SIGUSR2 is what submitit asks SLURM to send `hydra.launcher.signal_delay_s` before the time limit (and what
`scancel --signal=USR2 <job>` sends), SIGUSR1 is Lightning's convention for plain sbatch scripts; both save and
requeue. The handlers only set a flag: saving from inside a signal handler could catch the optimiser half-way
through a step, and ranks of a DDP job would disagree on the step. Every training run has this callback
(semmae.cli.run_steps.build_trainer adds it when the callbacks group does not)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from semmae.errors import StoppedError
from semmae.utils import slurm

NONE, SAVE_AND_EXIT, SAVE_AND_REQUEUE = 0, 1, 2


class Requeued(SystemExit):
    """Raised on every rank once the job is requeued; SystemExit, so no failed.json is written and submitit does
    not record a result: the requeued job will."""


class RequeueOnSignal(L.Callback):
    def __init__(
        self,
        enabled: bool | str = "auto",
        check_every_n_steps: int = 10,
        requeue_signals: tuple[str, ...] = ("SIGUSR1", "SIGUSR2"),
    ):
        self.enabled = enabled
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self.requeue_signals = [getattr(signal, name) for name in requeue_signals]
        self.received = NONE
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._armed = False
        self._requeue = False  # the requeue signals are handled too (SLURM, or enabled=true)

    # --- signal handling --------------------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        if not self._armed:  # still installed after fit ended: pass the signal on
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
            return
        code = SAVE_AND_EXIT if signum == signal.SIGTERM else SAVE_AND_REQUEUE
        if code > self.received:
            self.received, self.signum = code, signum

    def _install(self, signals: list[int]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore(self) -> None:
        self._armed = False
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handler and previous is not None:
                signal.signal(sig, previous)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._armed:
            return
        self._requeue = self.enabled is True or (self.enabled == "auto" and slurm.in_slurm_job())
        self.received, self._armed = NONE, True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Over Lightning's handlers (registered just before): its SIGUSR1 auto-requeue saves from inside the handler,
        # its SIGTERM handler stops without saving. Lightning puts back the handlers it found when fit ends.
        if self._armed:
            self._install([*(self.requeue_signals if self._requeue else []), signal.SIGTERM])

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    # --- at step boundaries -----------------------------------------------------------------------------------
    def _agreed(self, trainer: L.Trainer, pl_module: L.LightningModule, batch_idx: int) -> int:
        """The strongest request any rank has received (every rank checks at the same batch index)."""
        if trainer.world_size == 1:
            return self.received
        if (batch_idx + 1) % self.check_every_n_steps:
            return NONE
        code = torch.tensor(self.received, device=pl_module.device)
        return int(trainer.strategy.reduce(code, reduce_op="max").item())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._armed:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            # Lightning resumes a checkpoint of an epoch's last batch in the next epoch, skipping this epoch's
            # validation and epoch checkpoint: let the epoch end, and hand over at the next step boundary
            return
        code = self._agreed(trainer, pl_module, batch_idx)
        if code == NONE:
            return
        path = self.save(trainer)
        if threading.current_thread() is threading.main_thread():
            # from here on, SLURM's SIGTERM (sent by the requeue itself) must not interrupt the hand-over
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        why_not = None
        if code == SAVE_AND_REQUEUE:
            if trainer.is_global_zero:
                signum = self.signum if self.signum is not None else signal.SIGUSR2
                previous = self._previous.get(slurm_signal(), self._previous.get(signum))
                why_not = slurm.request_requeue(signum, previous)
            why_not = trainer.strategy.broadcast(why_not, src=0)
        if code == SAVE_AND_REQUEUE and why_not is None:
            rank_zero_info(f"Requeued SLURM job {slurm.job_id()} at step {trainer.global_step}; it resumes from {path}")
            # past the last collective: without this, interpreter exit waits on the process group for seconds, and
            # SLURM holds the requeued job until every task is gone
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            raise Requeued(-1)
        signum = self.signum if self.signum is not None else signal.SIGTERM
        name = signal.Signals(signum).name
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        not_requeued = f", not requeued ({why_not})" if code == SAVE_AND_REQUEUE else ""
        raise StoppedError(
            f"stopped by {name} at step {trainer.global_step} (epoch {trainer.current_epoch})"
            f"{not_requeued}; its last checkpoint is {path}: resume with ckpt_path={path} "
            f"hydra.run.dir={run_dir} and the run's other settings",
            signum=signum,
        )

    def save(self, trainer: L.Trainer) -> Path:
        """Write last.ckpt where ModelCheckpoint keeps it (all ranks take part, rank 0 writes), atomically."""
        ckpt_cb = trainer.checkpoint_callback
        dirpath = (
            Path(ckpt_cb.dirpath)
            if isinstance(ckpt_cb, ModelCheckpoint) and ckpt_cb.dirpath
            else Path(trainer.default_root_dir) / "checkpoints"
        )
        path = dirpath / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path, weights_only=False)  # atomic (AtomicCheckpointIO); ends with a barrier
        return path


def slurm_signal() -> int:
    """The signal submitit asks SLURM for (SUBMITIT_PREEMPT_SIGNAL, USR2 by default)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
