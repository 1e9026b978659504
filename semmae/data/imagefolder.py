"""ImageNet-1K or any ImageFolder tree (root/train/<class>/*.JPEG, root/val/<class>/*.JPEG) with MAE's recipe
(RandomResizedCrop 0.2-1 + flip; evaluation: resize to 1/0.875 of the size + centre crop). Two decoding paths:
`decode=workers` decodes and augments each image with PIL in DataLoader workers (bicubic); `decode=device` has
the workers read bytes only and decodes + augments the batch on the training device (semmae.data.jpeg_decode),
which keeps a GPU fed. `decode=auto` picks `device` when training on a GPU.

Bad data stops the run with one line naming it: a missing split, a class folder without images, and an image
that cannot be read or decoded (truncated, not an image). A research run should know its data is broken, and
silently dropping images changes the dataset; `dataset.skip_corrupt=true` instead drops each such image from its
batch with a warning naming the file (both decoding paths)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from semmae.data import image_files, jpeg_decode
from semmae.data.loaders import auto_num_workers, split_loader, subset_indices
from semmae.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DictDataset(Dataset):
    """ImageFolder samples as dicts; training samples also carry the un-augmented view for the online probe.
    An image that cannot be read is a DataError naming it, or with skip_corrupt {"corrupt": path} (the loader's
    image_files.collate_readable drops it)."""

    def __init__(self, base: ImageFolder, indices: list[int] | None, transform, plain_transform=None,
                 skip_corrupt: bool = False):
        self.base, self.indices = base, indices
        self.transform, self.plain_transform = transform, plain_transform
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = self.indices[i] if self.indices is not None else i
        path, label = self.base.samples[j]
        try:
            image = self.base.loader(path)
        except Exception as exc:  # PIL says "bad file" with OSError, SyntaxError, ValueError, DecompressionBombError...
            image_files.corrupt(path, str(exc) or type(exc).__name__, self.skip_corrupt)
            return {"corrupt": path}
        item = {"image": self.transform(image), "label": label, "index": i}
        if self.plain_transform is not None:
            item["image_plain"] = self.plain_transform(image)
        return item


class ImageFolderDataModule(L.LightningDataModule):
    def __init__(
        self,
        root: str | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        img_size: int = 224,
        channels: int = 3,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        crop_scale: tuple[float, float] = (0.2, 1.0),
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        train_subset: int | None = None,
        val_subset: int | None = None,
        seed: int = 0,
        pin_memory: bool | str = "auto",
        num_classes: int | None = None,
        name: str = "imagefolder",
        decode: str = "auto",
        skip_corrupt: bool = False,
        loader_timeout_s: float = 600.0,
    ):
        super().__init__()
        if root is None:
            raise ConfigError("ImageFolder data needs dataset.root=DIR (with train/ and val/ class folders)")
        if channels != 3:
            raise ConfigError("ImageFolder data is decoded as RGB: dataset.channels must be 3")
        self.root = Path(root).expanduser()
        self.train_dir, self.val_dir = train_dir, val_dir
        self.img_size, self.channels = int(img_size), 3
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = auto_num_workers() if num_workers == "auto" else int(num_workers)
        self.crop_scale, self.mean, self.std = tuple(crop_scale), tuple(mean), tuple(std)
        self.train_subset, self.val_subset, self.seed = train_subset, val_subset, int(seed)
        self.pin_memory = pin_memory
        self.num_classes = num_classes
        self.name = name
        if decode not in ("auto", "workers", "device"):
            raise ConfigError(f"dataset.decode must be auto, workers or device, got {decode}")
        self.decode = decode
        self.skip_corrupt = bool(skip_corrupt)
        if float(loader_timeout_s) < 0:
            raise ConfigError(f"dataset.loader_timeout_s must be >= 0 (0: wait forever), got {loader_timeout_s}")
        self.loader_timeout_s = float(loader_timeout_s)
        self.datasets: dict[str, Dataset] = {}
        self._scans: dict[str, ImageFolder] = {}

    def transform(self, train: bool):
        norm = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        if train:
            return T.Compose(
                [T.RandomResizedCrop(self.img_size, scale=self.crop_scale, interpolation=T.InterpolationMode.BICUBIC),
                 T.RandomHorizontalFlip()] + norm
            )
        resize = int(round(self.img_size / 0.875))
        return T.Compose(
            [T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(self.img_size)] + norm
        )

    def on_device(self) -> bool:
        """True when batches are decoded on the training device (decode=device, or auto on a GPU)."""
        if self.decode != "auto":
            return self.decode == "device"
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _scan(self, name: str) -> ImageFolder:
        """The split's files, scanned once: prepare_data scans them, so a bad tree fails before training starts."""
        if name not in self._scans:
            path = self.root / name
            if not path.is_dir():
                raise DataError(f"ImageFolder split not found: {path} (expected {path}/<class>/<image>)")
            self._scans[name] = image_files.image_folder(path)
        return self._scans[name]

    def _folder(self, name: str, train: bool) -> Dataset:
        ds = self._scan(name)
        if self.on_device():
            ds = jpeg_decode.EncodedImageFolder(ds, skip_corrupt=self.skip_corrupt)
        if self.num_classes is None:
            self.num_classes = len(ds.classes)
        indices = subset_indices(len(ds), self.train_subset if train else self.val_subset, self.seed)
        if isinstance(ds, jpeg_decode.EncodedImageFolder):
            ds.indices = indices
            return ds
        return DictDataset(ds, indices, self.transform(train), self.transform(False) if train else None,
                           skip_corrupt=self.skip_corrupt)

    def prepare_data(self) -> None:
        for name in (self.train_dir, self.val_dir):
            self._scan(name)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.datasets = {"train": self._folder(self.train_dir, True), "val": self._folder(self.val_dir, False)}

    def _loader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        return split_loader(self.datasets[split], self.batch_size if train else self.eval_batch_size, train,
                            self.num_workers, self.pin_memory, timeout_s=self.loader_timeout_s,
                            collate_fn=(jpeg_decode.collate_encoded if self.on_device()
                                        else image_files.collate_readable))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    # --- device decoding (decode=device) -------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "jpeg" in batch:  # bytes stay on the CPU: decode_jpeg reads them there
            return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                    for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def augment_batch(self, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        if "jpeg" not in batch:
            return batch
        device = batch["label"].device
        return jpeg_decode.device_batch(batch, device, self.img_size, train, self.mean, self.std, self.crop_scale,
                                        skip_corrupt=self.skip_corrupt)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        return self.augment_batch(batch, train=bool(trainer is not None and trainer.training))
