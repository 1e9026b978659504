"""Linear probing as a LightningModule: a frozen encoder, MAE's probe head (BatchNorm1d without affine + Linear) on
the CLS token (or the mean patch token), the optimiser of model.optim (conf/optim/lars_probe.yaml: LARS, lr scaling
rule, per-step warmup + cosine) over the head; top-1 / top-5. Batches carry either images (the encoder runs,
without gradients) or cached features ("feature", see semmae.data.feature_cache), so the same module trains on
both."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
import torchmetrics

from semmae.errors import ConfigError
from semmae.models.encoder import ViTEncoder
from semmae.models.export import head_layout
from semmae.models.heads import POOLS, ProbeHead, pool_tokens
from semmae.tasks.base import ClassifierEvaluation, plain



class LinearProbeTask(ClassifierEvaluation):
    kind = "linprobe"
    optim_group = "lars_probe"
    optim_keys = ("weight_decay",)

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
        super().__init__(num_classes, optim, batch_size)
        self.cache_limits = cache_limits = plain(cache_limits) or {}  # the trainer's: the feature cache reads them
        if pool not in POOLS:
            raise ConfigError(f"model.pool must be one of {POOLS}, got {pool!r}")
        self.encoder = encoder.requires_grad_(False).eval()
        self.head = ProbeHead(encoder.embed_dim, num_classes)
        self.pool = pool
        self.feature_cache = feature_cache
        self.bf16 = bf16
        self.train_loss = torchmetrics.MeanMetric()
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.save_hyperparameters(ignore=["encoder"])
        self.hparams["encoder"] = dict(encoder.config)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: no drop path, no dropout, ever
        return self

    # --- features ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the probe's input feature [B, D] (float32), from the frozen encoder."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16_enabled(self.bf16)):
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

    # --- optimisation and checkpoints -----------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """The head alone (the encoder is frozen)."""
        return [{"params": list(self.head.parameters()), "weight_decay": self.optim_cfg["weight_decay"]}]

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"head": head_layout(self.encoder), "pool": self.pool}
