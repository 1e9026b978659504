"""fashion_mnist_seg, the offline segmentation default: real Fashion-MNIST images with a per-pixel label map,
label = garment class + 1 on the garment, 0 on the background (11 classes: background + the 10 garments).

The garment is found by a fixed threshold, the same for every image: blur the uint8 image with a 3x3 binomial kernel
([1 2 1] x [1 2 1] / 16) and call a pixel foreground where the blurred value is > 20 (of 255). Why these numbers:
half of all pixels are exactly 0 (the photographs were cut out onto black), so any small threshold separates the
silhouette; a raw threshold leaves pinholes inside dark prints and checks (and splits dark jackets), which the blur
closes; 20 keeps the dark parts of garments (many reach only 30-60) while the blurred one-pixel halo outside the
outline stays background. About 53% of the pixels are foreground on the test set (trousers 42%, pullovers 70%).

Training batches get MAE's batched crop + flip (semmae.data.augment), applied to image and label map alike, with a
milder crop scale than pretraining (0.5-1 of the area by default): a crop must keep enough of the garment to tell
its class (shirt, pullover and coat differ mostly in outline), otherwise the label of a fragment is guesswork."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from semmae.data.fashion_mnist import CLASSES, FashionMNISTDataModule
from semmae.errors import ConfigError

IGNORE_INDEX = 255
BLUR = torch.tensor([1.0, 2.0, 1.0])


def garment_masks(images: torch.Tensor, labels: torch.Tensor, threshold: float = 20.0) -> torch.Tensor:
    """uint8 images [N, 1, H, W] and garment classes [N] -> uint8 label maps [N, H, W]: class + 1 where the
    3x3-binomial-blurred image is > threshold, else 0."""
    kernel = torch.outer(BLUR, BLUR).to(images.device) / 16.0
    blurred = F.conv2d(images.float(), kernel[None, None], padding=1)[:, 0]
    fg = blurred > threshold
    return torch.where(fg, (labels.to(images.device) + 1).view(-1, 1, 1), 0).to(torch.uint8)


class FashionMNISTSegDataModule(FashionMNISTDataModule):
    """Batches: "image" (augmented on the device), "mask" (int64 [B, H, W], 0..10; 255 = ignore, on padded
    evaluation samples), "label" (garment class), "index", "valid". Always resident (the data are 150 MB)."""

    num_classes = 11
    classes = ("background", *CLASSES)
    ignore_index = IGNORE_INDEX

    def __init__(self, threshold: float = 20.0, **kwargs):
        kwargs.setdefault("crop_scale", (0.5, 1.0))
        if not kwargs.pop("resident", True):
            raise ConfigError("fashion_mnist_seg is always resident (in memory): drop dataset.resident=false")
        if kwargs.get("segments") is not None:
            raise ConfigError("fashion_mnist_seg carries label masks, not segment maps: drop dataset.segments")
        super().__init__(resident=True, **kwargs)
        self.threshold = float(threshold)
        self.masks: dict[str, torch.Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        """The label maps travel with their images as the per-image map "mask" (ImageDataModule's maps)."""
        super().setup(stage)
        for split, (images, labels) in self.data.items():
            if split not in self.masks:
                self.masks[split] = garment_masks(images, labels, self.threshold)
                self.maps[split] = {**self.maps.get(split, {}), "mask": self.masks[split]}

    @property
    def train_augmentation_kind(self) -> str | None:
        """None: the crop + flip must move the label map with its image, which a replacement would not do."""
        return None

    def set_train_augmentation(self, transform) -> None:
        raise ConfigError(
            f"{self.name}: the training crop + flip move each label mask with its image, and cannot be replaced"
        )

    def augment_batch(self, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        """Training: crop + flip of image and label map together, plus the evaluation view as "image_plain" (so the
        pretraining task's online probe also runs on this dataset). Evaluation: resize (if needed) + normalise."""
        images, masks = batch["image"], batch["mask"]
        if train:
            out, maps = self.train_augment(images, label_maps=masks)
            return {**batch, "image": out, "mask": maps.long(), "image_plain": self.eval_transform(images)}
        out, maps = self.eval_transform(images, label_maps=masks)
        maps = maps.long()
        valid = batch.get("valid")
        if valid is not None:  # samples repeated to even out DDP shards must not count
            maps = torch.where(valid.view(-1, 1, 1), maps, IGNORE_INDEX)
        return {**batch, "image": out, "mask": maps}
