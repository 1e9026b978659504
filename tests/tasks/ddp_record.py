"""A callback for the DDP test (tests/tasks/test_ddp.py), added through the config so that every rank builds it:
each rank writes what it saw to <run>/ddp_rank<r>.json: its training sample indices, the mask it drew for its first
training batch, its local (unreduced) validation sums, and the metrics Lightning reports after the reduction."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from semmae.tasks.pretrain import TRAIN_STREAM


class RecordRank(L.Callback):
    def __init__(self):
        self.train_indices: list[int] = []
        self.first_mask: list[list[int]] | None = None
        self.valid = self.padded = 0
        self.local: dict[str, float] = {}

    def on_fit_start(self, trainer, pl_module):
        make_mask = pl_module.make_mask

        def recording(batch, stream, batch_idx):  # the mask training_step really uses
            mask = make_mask(batch, stream, batch_idx)
            if stream == TRAIN_STREAM and batch_idx == 0 and self.first_mask is None:
                self.first_mask = mask.ids_keep.tolist()
            return mask

        pl_module.make_mask = recording

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train_indices += batch["index"].tolist()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.valid += int(batch["valid"].sum())
            self.padded += int((~batch["valid"]).sum())

    def on_validation_epoch_end(self, trainer, pl_module):
        # runs before Lightning computes (and so reduces) the logged metrics: these are this rank's own sums
        acc = pl_module.val_probe_acc
        self.local = {
            "loss_sum": float(pl_module.val_loss.mean_value),
            "loss_weight": float(pl_module.val_loss.weight),
            "correct": float(acc.tp.sum()),
            "seen": float((acc.tp + acc.fn).sum()),
        }

    def on_fit_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "train_indices": self.train_indices,
            "first_mask": self.first_mask,
            "valid": self.valid,
            "padded": self.padded,
            "local": self.local,
            "metrics": metrics,
            "effective_batch": pl_module.effective_batch(),
            "lr": pl_module.hparams["lr"],
            "sampler": type(trainer.train_dataloader.sampler).__name__
            if trainer.train_dataloader is not None
            else None,
        }
        Path(trainer.default_root_dir, f"ddp_rank{trainer.global_rank}.json").write_text(json.dumps(record))
