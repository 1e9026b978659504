"""Semantic segmentation as a LightningModule: a Segmenter (ViT encoder + pyramid + UperNet, semmae.models.segmenter)
trained with pixel cross-entropy (ignore_index 255; + the auxiliary head's, weighted), the optimiser of model.optim
(conf/optim/adamw_segment.yaml: AdamW at an absolute lr, per-step warmup then poly or cosine decay) over layer-wise lr
decay groups; evaluated by whole-image or sliding-window inference into a
confusion matrix -> mIoU, pixel accuracy, per-class IoU."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torchmetrics.classification import MulticlassConfusionMatrix

from semmae.errors import ConfigError
from semmae.models.encoder import ViTEncoder
from semmae.models.segmenter import Segmenter, slide_inference
from semmae.models.upernet import resize
from semmae.optim.layer_decay import layer_decay_groups
from semmae.tasks.base import TaskBase, plain
from semmae.tasks.seg_metrics import segmentation_scores
from semmae.tasks.settings import settings


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the labelled pixels (logits resized to the labels first) and their number; 0 (not
    NaN) for a batch without labelled pixels."""
    logits = resize(logits, target.shape[-2:])
    n = int((target != ignore_index).sum())
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / max(n, 1), n


class SegmentTask(TaskBase):
    kind = "segment"
    optim_group = "adamw_segment"
    lr_key = "lr"  # the peak lr as given: not scaled with the batch
    optim_keys = ("weight_decay", "layer_decay")

    def __init__(
        self,
        segmenter: Segmenter,
        num_classes: int,
        ignore_index: int = 255,
        optim: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        inference: Mapping[str, Any] | None = None,
    ):
        super().__init__(optim)
        loss, inference = plain(loss) or {}, plain(inference) or {}
        self.segmenter = segmenter
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.loss_cfg = settings("model.loss", {"aux_weight": 0.4}, loss)
        self.inference_cfg = settings("model.inference", {"mode": "whole", "window": None, "stride": None}, inference)
        if self.inference_cfg["mode"] not in ("whole", "slide"):
            raise ConfigError(f"model.inference.mode={self.inference_cfg['mode']}: choose whole or slide")
        self.train_loss = torchmetrics.MeanMetric()
        self.eval_loss = torchmetrics.MeanMetric()
        self.confmat = MulticlassConfusionMatrix(self.num_classes, ignore_index=self.ignore_index)
        self.scores: dict[str, dict[str, torch.Tensor]] = {}
        self.save_hyperparameters(ignore=["segmenter"])
        self.hparams["model"] = dict(segmenter.encoder.config)
        self.hparams["encoder_source"] = getattr(segmenter.encoder, "source", None)

    @property
    def encoder(self) -> ViTEncoder:
        """The ViT encoder (for callbacks that read attention, e.g. attention-map figures)."""
        return self.segmenter.encoder

    # --- steps ------------------------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        masks = batch["mask"]
        out = self.segmenter(batch["image"])
        loss, n = pixel_cross_entropy(out["out"], masks, self.ignore_index)
        if out["aux"] is not None and self.loss_cfg["aux_weight"]:
            aux, _ = pixel_cross_entropy(out["aux"], masks, self.ignore_index)
            loss = loss + self.loss_cfg["aux_weight"] * aux
        self.train_loss.update(loss.detach(), weight=max(n, 1))
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        if (batch_idx + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
            peak = max(g["lr"] for g in self.optimizers().param_groups)  # the heads' lr (no layer decay)
            self.log("train/lr", peak, on_step=True, on_epoch=False)
        return loss

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, K, H, W] at the images' resolution, whole-image or by sliding window (model.inference)."""
        cfg = self.inference_cfg
        if cfg["mode"] == "whole":
            return self.segmenter.predict(images)
        window = cfg["window"] or self.encoder.config["img_size"]
        stride = cfg["stride"] or max(1, (2 * window) // 3)
        return slide_inference(self.segmenter.predict, images, window, stride, self.num_classes)

    def _eval_step(self, batch: Mapping[str, Any], prefix: str) -> None:
        masks = batch["mask"]
        logits = resize(self.predict_logits(batch["image"]), masks.shape[-2:])
        loss, n = pixel_cross_entropy(logits, masks, self.ignore_index)
        if n:
            self.eval_loss.update(loss, weight=n)
        self.confmat.update(logits.argmax(1), masks)
        self.log(f"{prefix}/loss", self.eval_loss, on_step=False, on_epoch=True, prog_bar=prefix == "val")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _report(self, prefix: str) -> None:
        scores = segmentation_scores(self.confmat.compute())  # compute() already gathers every rank's counts
        self.confmat.reset()
        self.scores[prefix] = scores
        for key in ("mIoU", "aAcc", "mAcc"):
            if not torch.isnan(scores[key]):
                self.log(f"{prefix}/{key}", scores[key].float(), prog_bar=key == "mIoU", rank_zero_only=True)
        names = self.class_names()
        for name, iou in zip(names, scores["IoU"].tolist()):
            if not math.isnan(iou):
                self.log(f"{prefix}/IoU/{name}", iou, rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._report("val")
        else:
            self.confmat.reset()

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def class_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "classes", None)
        if names is not None and len(names) == self.num_classes:
            return list(names)
        return [str(i) for i in range(self.num_classes)]

    # --- optimisation and checkpoints ---------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Layer-wise lr decay over the segmenter: the neck and heads at the peak lr, encoder block i at
        layer_decay ** (depth + 1 - i) of it, the embeddings at layer_decay ** (depth + 1)."""
        return layer_decay_groups(self.segmenter, self.optim_cfg["weight_decay"], self.optim_cfg["layer_decay"])

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "encoder_source": getattr(self.encoder, "source", None)}
