"""Segmentation scores from a confusion matrix (rows = ground truth, columns = prediction, ignored pixels already
left out; torchmetrics' MulticlassConfusionMatrix accumulates it, across DDP ranks too). Conventions as mmseg's:
a class with no pixel in the ground truth nor the prediction has IoU NaN and does not count in the mean."""

from __future__ import annotations

import math

import torch


def segmentation_scores(confmat: torch.Tensor) -> dict[str, torch.Tensor]:
    """-> {"mIoU", "aAcc" (pixel accuracy), "mAcc" (mean class accuracy), "IoU" [K], "Acc" [K]}."""
    cm = confmat.double()
    tp = cm.diag()
    gt = cm.sum(1)
    union = gt + cm.sum(0) - tp
    nan = torch.tensor(math.nan, dtype=cm.dtype, device=cm.device)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    total = cm.sum()
    return {
        "mIoU": iou.nanmean(),
        "aAcc": tp.sum() / total if total > 0 else nan,
        "mAcc": acc.nanmean(),
        "IoU": iou,
        "Acc": acc,
    }


def iou_table(scores: dict[str, torch.Tensor], class_names: list[str] | tuple[str, ...] | None) -> list[dict]:
    """Per-class rows {"class", "IoU", "Acc"} (None where undefined) for results.json and the console."""
    iou, acc = scores["IoU"].tolist(), scores["Acc"].tolist()
    names = (
        list(class_names)
        if class_names is not None and len(class_names) == len(iou)
        else [str(i) for i in range(len(iou))]
    )

    def val(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 6)

    return [{"class": n, "IoU": val(i), "Acc": val(a)} for n, i, a in zip(names, iou, acc)]
