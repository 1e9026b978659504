"""Stopping a diverged run. MAE's own loop exits at the first non-finite loss; this callback does the same for
every task: the loss of each training step is recorded on the device (no host sync), read every
`check_every_n_steps` steps and before any checkpoint is written, and a non-finite one ends the run with one
line that names the step and what to try. No checkpoint is written after it, so last.ckpt stays the last
finite one."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from semmae.errors import DivergedError


def step_loss(outputs: Any) -> torch.Tensor | None:
    """The loss a training_step returned (a tensor, or a dict with "loss")."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return loss.detach() if torch.is_tensor(loss) else None


def lr_hint(pl_module: L.LightningModule) -> str:
    """What to lower, named as the task's config names it."""
    cfg = getattr(pl_module, "optim_cfg", None) or {}
    for key in ("blr", "lr"):
        if key in cfg:
            return f"a lower model.optim.{key} (now {cfg[key]:g})"
    return "a lower learning rate"


class FiniteLoss(L.Callback):
    def __init__(self, check_every_n_steps: int = 1):
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self._first_bad: torch.Tensor | None = None  # the first step whose loss was not finite, -1 while none
        self._first_value: torch.Tensor | None = None
        self._since_check = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = step_loss(outputs)
        if loss is None:
            return
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._first_value = torch.zeros((), dtype=torch.float32, device=loss.device)
        new = (~torch.isfinite(loss)) & (self._first_bad < 0)
        # the optimiser step that produced this loss, counted from 1 (global_step has counted it already)
        self._first_bad = torch.where(new, max(1, trainer.global_step), self._first_bad)  # a scalar: no host copy
        self._first_value = torch.where(new, loss.float(), self._first_value)
        self._since_check += 1
        if self._since_check >= self.check_every_n_steps:
            self.check(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.check(trainer, pl_module)  # raising here stops the write: no checkpoint holds diverged weights

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer, pl_module)

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since_check = 0
        if self._first_bad is None:
            return
        first = int(self._first_bad)  # the one host sync
        if first < 0:
            return
        value = float(self._first_value)
        ckpt = trainer.checkpoint_callback
        last = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "") if ckpt else ""
        kept = f"the last checkpoint, {last}, is from before it" if last else "no checkpoint had been written yet"
        raise DivergedError(
            f"training diverged: the loss is {value} at step {first} (epoch {trainer.current_epoch}); the run "
            f"stopped and {kept}. Try {lr_hint(pl_module)}, a longer warmup (model.optim.warmup_epochs) or "
            f"gradient clipping (trainer.gradient_clip_val=1.0)"
        )
