"""Linear probing as a LightningModule: a frozen encoder, MAE's probe head (BatchNorm1d without affine + Linear) on
the CLS token (or the mean patch token), LARS with the lr scaling rule, per-step warmup + cosine; top-1 / top-5.
Batches carry either images (the encoder runs, without gradients) or cached features ("feature", see
semmae.tasks.feature_cache), so the same module trains on both."""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics

from semmae.errors import ConfigError
from semmae.models.checkpoints import head_layout
from semmae.models.encoder import ViTEncoder
from semmae.models.heads import POOLS, ProbeHead, pool_tokens
from semmae.optim import scaled_lr
from semmae.optim.lars import LARS
from semmae.tasks.common import (
    ClassifierEvaluation,
    accuracy_metrics,
    checkpoint_record,
    effective_batch,
    settings,
    warmup_cosine_scheduler,
)
from semmae.tasks.pretrain import cpu_has_native_bf16, plain

# The frozen encoder stays in eval mode on purpose (no drop path); Lightning would warn about it at every fit.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


class LinearProbeTask(ClassifierEvaluation, L.LightningModule):
    def __init__(
        self,
        encoder: ViTEncoder,
        num_classes: int,
        batch_size: int,
        pool: str = "token",
        feature_cache: bool | str = "auto",
        bf16: bool | str = "auto",
        optim: Mapping[str, Any] | None = None,
        cache_limits: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        optim = plain(optim) or {}  # plain containers: checkpoints load with weights_only
        self.cache_limits = cache_limits = plain(cache_limits) or {}  # the trainer's: the feature cache reads them
        if pool not in POOLS:
            raise ConfigError(f"model.pool must be one of {POOLS}, got {pool!r}")
        self.encoder = encoder.requires_grad_(False).eval()
        self.head = ProbeHead(encoder.embed_dim, num_classes)
        self.pool = pool
        self.feature_cache = feature_cache
        self.bf16 = bf16
        self.batch_size = int(batch_size)
        self.optim_cfg = settings("model.optim", {"blr": 0.1, "weight_decay": 0.0, "momentum": 0.9,
                                                  "trust_coefficient": 0.001, "warmup_epochs": 10, "min_lr": 0.0}, optim)
        self.train_loss = torchmetrics.MeanMetric()
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_loss = torchmetrics.MeanMetric()
        self.test_loss = torchmetrics.MeanMetric()
        self.val_metrics = accuracy_metrics(num_classes)
        self.test_metrics = accuracy_metrics(num_classes)
        self.save_hyperparameters(ignore=["encoder"])
        self.hparams["encoder"] = dict(encoder.config)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: no drop path, no dropout, ever
        return self

    # --- features ------------------------------------------------------------------------------------------------
    def use_bf16(self) -> bool:
        """bf16 encoder forward where it is fast and the trainer does not already autocast: CPUs with native bf16."""
        if self.bf16 == "auto":
            return self.device.type == "cpu" and cpu_has_native_bf16()
        return bool(self.bf16)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the probe's input feature [B, D] (float32), from the frozen encoder."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16()):
            tokens = self.encoder.forward_features(images)
        return pool_tokens(tokens, self.pool, self.encoder.num_prefix_tokens).float()

    def features(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["feature"] if "feature" in batch else self.encode(batch["image"])

    # --- steps ---------------------------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.head(self.features(batch))
        loss = F.cross_entropy(logits, batch["label"])
        self.train_loss.update(loss.detach())
        self.train_acc.update(logits.detach(), batch["label"])
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/top1", self.train_acc, on_step=False, on_epoch=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True)
        return loss

    def eval_logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.head(self.features(batch))

    # --- optimisation ----------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim_cfg
        lr = scaled_lr(cfg["blr"], effective_batch(self.trainer, self.batch_size))
        opt = LARS(self.head.parameters(), lr=lr, weight_decay=cfg["weight_decay"], momentum=cfg["momentum"],
                   trust_coefficient=cfg["trust_coefficient"])
        self.hparams["lr"] = lr
        self.hparams["effective_batch"] = effective_batch(self.trainer, self.batch_size)
        return {"optimizer": opt,
                "lr_scheduler": warmup_cosine_scheduler(opt, self.trainer, cfg["warmup_epochs"], lr, cfg["min_lr"])}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["semmae"] = checkpoint_record(self, self.encoder, "linprobe", head=head_layout(self.encoder),
                                                 pool=self.pool)
