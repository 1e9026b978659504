"""Fine-tuning augmentation on top of a datamodule's own crop + flip (MAE's fine-tuning recipe), set on the
datamodule before training through its set_train_augmentation, of the kind it takes (train_augmentation_kind):
- "image", ImageFolder data (RGB, decoded per image in workers): timm's create_transform — RandomResizedCrop
  (bicubic), flip, RandAugment (e.g. rand-m9-mstd0.5-inc1) and random erasing.
- "batch", in-memory data (Fashion-MNIST, CIFAR; augmented as whole batches on the device): RandomResizedCrop + flip
  with dataset.crop_scale, then timm's RandomErasing per image on the normalised batch. RandAugment's ops work on single
  PIL images, so this path has none; grayscale Fashion-MNIST therefore gets crop + flip + random erasing (+ the
  task's Mixup / CutMix).
Mixup / CutMix are not here: the fine-tuning task applies them on the device, where the labels are."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data import create_transform
from timm.data.random_erasing import RandomErasing

from semmae.data.interface import SemmaeDataModule
from semmae.errors import ConfigError


class BatchRandomErasing:
    """Wraps a batched augmentation: its output, then timm RandomErasing on each image (normalised space)."""

    def __init__(self, augment, prob: float, mode: str = "pixel", count: int = 1):
        self.augment = augment
        self.erase = RandomErasing(probability=prob, mode=mode, max_count=count, device="cpu")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = self.augment(images, generator)
        self.erase.device = out.device
        return self.erase(out)


@dataclass
class FinetuneAugment:
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.0
    re_mode: str = "pixel"
    re_count: int = 1
    interpolation: str = "bicubic"

    def apply(self, datamodule: SemmaeDataModule) -> str:
        """Set the training augmentation of datamodule; -> a one-line description of what it now does."""
        kind = datamodule.train_augmentation_kind if isinstance(datamodule, SemmaeDataModule) else None
        if kind == "image":
            datamodule.set_train_augmentation(
                create_transform(
                    input_size=datamodule.img_size,
                    is_training=True,
                    scale=datamodule.crop_scale,
                    hflip=0.5,
                    color_jitter=None,
                    auto_augment=self.auto_augment,
                    interpolation=self.interpolation,
                    re_prob=self.re_prob,
                    re_mode=self.re_mode,
                    re_count=self.re_count,
                    mean=datamodule.mean,
                    std=datamodule.std,
                )
            )
            return (
                f"timm create_transform: RandomResizedCrop{tuple(datamodule.crop_scale)} + flip + "
                f"{self.auto_augment or 'no RandAugment'} + random erasing p={self.re_prob}"
            )
        if kind == "batch" or (kind is None and getattr(datamodule, "in_memory", False)):
            what = f"RandomResizedCrop{tuple(datamodule.crop_scale)} + flip"
            if self.re_prob > 0 and kind is None:
                if getattr(datamodule, "resident", True) is False:
                    return f"{what} (random erasing needs dataset.resident=true; not applied)"
                return f"{what} (random erasing: {datamodule.name} takes no batched augmentation; not applied)"
            if self.re_prob > 0:
                datamodule.set_train_augmentation(
                    BatchRandomErasing(datamodule.train_augmentation, self.re_prob, self.re_mode, self.re_count)
                )
                what += f" + random erasing p={self.re_prob}"
            return what + " (batched; RandAugment only on the ImageFolder path)"
        if isinstance(datamodule, SemmaeDataModule):
            datamodule.set_train_augmentation(None)  # the datamodule's own one-line reason
        raise ConfigError(f"fine-tuning augmentation does not know {type(datamodule).__name__}")
