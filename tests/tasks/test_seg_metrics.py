"""mIoU, pixel accuracy and per-class IoU from a confusion matrix, on a case computed by hand."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from semmae.tasks.seg_metrics import iou_table, segmentation_scores

# 4 classes, 255 = ignore. Class 3 appears in neither target nor prediction.
TARGET = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
PRED = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])


def confmat():
    m = MulticlassConfusionMatrix(4, ignore_index=255)
    m.update(PRED, TARGET)
    return m.compute()


def test_hand_computed_case():
    s = segmentation_scores(confmat())
    # class 0: tp 1 (pixel 0,0), fp 1 (pred 0 at a 2), fn 1 (target 0 predicted 1) -> 1/3
    # class 1: tp 3, fp 1 (target 0 predicted 1), fn 0 -> 3/4
    # class 2: tp 1, fp 0 (the pred 2 at the ignored pixel does not count), fn 1 -> 1/2
    assert torch.allclose(s["IoU"][:3], torch.tensor([1 / 3, 3 / 4, 1 / 2], dtype=torch.float64))
    assert math.isnan(s["IoU"][3])  # absent everywhere: undefined, left out of the mean
    assert s["mIoU"].item() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert s["aAcc"].item() == pytest.approx(5 / 7)  # 7 labelled pixels, 5 right
    assert s["mAcc"].item() == pytest.approx((1 / 2 + 3 / 3 + 1 / 2) / 3)


def test_agrees_with_torchmetrics_jaccard_where_defined():
    ref = MulticlassJaccardIndex(4, ignore_index=255, average="none")(PRED, TARGET)
    ours = segmentation_scores(confmat())["IoU"]
    assert torch.allclose(ours[:3].float(), ref[:3])
    macro = MulticlassJaccardIndex(4, ignore_index=255, average="macro")(PRED, TARGET)
    assert segmentation_scores(confmat())["mIoU"].item() == pytest.approx(macro.item())


def test_table_rows():
    rows = iou_table(segmentation_scores(confmat()), ["a", "b", "c", "d"])
    assert [r["class"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[1]["IoU"] == 0.75 and rows[3]["IoU"] is None and rows[3]["Acc"] is None
