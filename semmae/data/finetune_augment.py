"""Fine-tuning augmentation on top of a datamodule's own crop + flip (MAE's fine-tuning recipe), set on the
datamodule before training:
- ImageFolder data (RGB, decoded per image in workers): timm's create_transform — RandomResizedCrop (bicubic),
  flip, RandAugment (e.g. rand-m9-mstd0.5-inc1) and random erasing.
- In-memory data (Fashion-MNIST, CIFAR; augmented as whole batches on the device): RandomResizedCrop + flip with
  dataset.crop_scale, then timm's RandomErasing per image on the normalised batch. RandAugment's ops work on single
  PIL images, so this path has none; grayscale Fashion-MNIST therefore gets crop + flip + random erasing (+ the
  task's Mixup / CutMix).
Mixup / CutMix are not here: the fine-tuning task applies them on the device, where the labels are."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from timm.data import create_transform
from timm.data.random_erasing import RandomErasing

from semmae.data.datamodule import ImageDataModule
from semmae.data.imagefolder import ImageFolderDataModule
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
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    interpolation: str = "bicubic"

    def apply(self, datamodule: L.LightningDataModule) -> str:
        """Set the training augmentation of datamodule; -> a one-line description of what it now does."""
        if isinstance(datamodule, ImageFolderDataModule):
            datamodule.setup("fit")
            train = datamodule.datasets["train"]
            train.transform = create_transform(
                input_size=datamodule.img_size, is_training=True, scale=datamodule.crop_scale, hflip=0.5,
                color_jitter=None, auto_augment=self.auto_augment, interpolation=self.interpolation,
                re_prob=self.re_prob, re_mode=self.re_mode, re_count=self.re_count,
                mean=datamodule.mean, std=datamodule.std,
            )
            train.plain_transform = None  # the un-augmented view is only for pretraining's online probe
            return (f"timm create_transform: RandomResizedCrop{tuple(datamodule.crop_scale)} + flip + "
                    f"{self.auto_augment or 'no RandAugment'} + random erasing p={self.re_prob}")
        if isinstance(datamodule, ImageDataModule):
            what = f"RandomResizedCrop{tuple(datamodule.crop_scale)} + flip"
            if self.re_prob > 0 and not datamodule.resident:
                return f"{what} (random erasing needs dataset.resident=true; not applied)"
            if self.re_prob > 0:
                datamodule.train_augment = BatchRandomErasing(datamodule.train_augment, self.re_prob, self.re_mode,
                                                              self.re_count)
                what += f" + random erasing p={self.re_prob}"
            return what + " (batched; RandAugment only on the ImageFolder path)"
        raise ConfigError(f"fine-tuning augmentation does not know {type(datamodule).__name__}")
