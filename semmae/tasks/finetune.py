"""Fine-tuning as a LightningModule (MAE's recipe): the whole encoder trained with a new head on the global average
of the patch tokens after fc_norm, drop path, the optimiser of model.optim (conf/optim/adamw_layer_decay.yaml: AdamW,
lr scaling rule, per-step warmup + cosine) over layer-wise lr decay groups; Mixup / CutMix with label smoothing
(timm), soft-target cross-entropy; top-1 / top-5. Weight EMA is a callback (callbacks/ema.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from semmae.errors import ConfigError
from semmae.models.encoder import ViTEncoder
from semmae.models.export import head_layout
from semmae.optim.layer_decay import layer_decay_groups
from semmae.tasks.base import ClassifierEvaluation, plain
from semmae.tasks.settings import settings


def build_mixup(cfg: Mapping[str, Any], num_classes: int, batch_size: int) -> Mixup | None:
    """timm Mixup from {mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing}; None when both alphas are 0."""
    if cfg.get("mixup_alpha", 0) <= 0 and cfg.get("cutmix_alpha", 0) <= 0:
        return None
    if batch_size % 2:
        raise ConfigError(
            f"Mixup / CutMix mix each batch with its reverse and need an even batch size, "
            f"got dataset.batch_size={batch_size}"
        )
    return Mixup(
        mixup_alpha=cfg.get("mixup_alpha", 0.0),
        cutmix_alpha=cfg.get("cutmix_alpha", 0.0),
        prob=cfg.get("prob", 1.0),
        switch_prob=cfg.get("switch_prob", 0.5),
        mode="batch",
        label_smoothing=cfg.get("label_smoothing", 0.1),
        num_classes=num_classes,
    )


class FinetuneTask(ClassifierEvaluation):
    kind = "finetune"
    optim_group = "adamw_layer_decay"
    optim_keys = ("weight_decay", "layer_decay")

    def __init__(
        self,
        encoder: ViTEncoder,
        num_classes: int,
        batch_size: int,
        optim: Mapping[str, Any] | None = None,
        mixup: Mapping[str, Any] | None = None,
        head_init_std: float | None = None,
    ):
        if encoder.num_classes != num_classes:
            raise ConfigError(
                f"the encoder was built with {encoder.num_classes} classes, the dataset has {num_classes}"
            )
        super().__init__(num_classes, optim, batch_size)
        mixup = plain(mixup) or {}  # plain containers: checkpoints load with weights_only
        self.encoder = encoder
        if head_init_std is not None:  # MAE: a near-zero head, so fine-tuning starts from the pretrained features
            torch.nn.init.trunc_normal_(encoder.head.weight, std=head_init_std)
            torch.nn.init.zeros_(encoder.head.bias)
        self.mixup_cfg = settings(
            "model.mixup",
            {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5, "label_smoothing": 0.1},
            mixup,
        )
        self.mixup = build_mixup(self.mixup_cfg, num_classes, self.batch_size)
        self.soft_ce = SoftTargetCrossEntropy()
        self.train_loss = torchmetrics.MeanMetric()
        self.save_hyperparameters(ignore=["encoder"])
        self.hparams["encoder"] = {**encoder.config, **head_layout(encoder)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
            loss = self.soft_ce(self(images), targets)
        else:
            loss = F.cross_entropy(self(images), labels, label_smoothing=self.mixup_cfg["label_smoothing"])
        self.train_loss.update(loss.detach())
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        if (batch_idx + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            peak = max(g["lr"] for g in self.optimizers().param_groups)  # the head's; block i has decay^(depth-i) of it
            self.log("train/lr", peak, on_step=True, on_epoch=False)
        return loss

    def eval_logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(batch["image"])

    def param_groups(self) -> list[dict[str, Any]]:
        """Layer-wise lr decay (model.optim.layer_decay): the head at the peak lr, block i at decay^(depth - i) of
        it."""
        return layer_decay_groups(self.encoder, self.optim_cfg["weight_decay"], self.optim_cfg["layer_decay"])

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"head": head_layout(self.encoder)}
