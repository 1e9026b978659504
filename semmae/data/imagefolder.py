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

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from semmae.data import disk_images, jpeg_decode
from semmae.data.interface import SemmaeDataModule
from semmae.errors import ConfigError, DataError


class DictDataset(Dataset):
    """ImageFolder samples as dicts; training samples also carry the un-augmented view for the online probe.
    An image that cannot be read is a DataError naming it, or with skip_corrupt {"corrupt": path} (the loader's
    disk_images.collate_readable drops it)."""

    def __init__(
        self,
        base: ImageFolder,
        indices: list[int] | None,
        transform,
        plain_transform=None,
        skip_corrupt: bool = False,
        hooks: dict[str, Callable] | None = None,
    ):
        self.base, self.indices = base, indices
        self.transform, self.plain_transform = transform, plain_transform
        self.skip_corrupt = skip_corrupt
        self.hooks = dict(hooks or {})  # {key: fn(augmented image)} run per sample, e.g. SLIC superpixels

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def item_path(self, i: int) -> str:
        """The file item i reads (a loader names it when its worker never answers)."""
        return self.base.samples[self.indices[i] if self.indices is not None else i][0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = self.indices[i] if self.indices is not None else i
        path, label = self.base.samples[j]
        try:
            image = self.base.loader(path)
        except Exception as exc:  # PIL says "bad file" with OSError, SyntaxError, ValueError, DecompressionBombError...
            disk_images.corrupt(path, str(exc) or type(exc).__name__, self.skip_corrupt)
            return {"corrupt": path}
        item = {"image": self.transform(image), "label": label, "index": i}
        if self.plain_transform is not None:
            item["image_plain"] = self.plain_transform(image)
        for key, hook in self.hooks.items():
            item[key] = hook(item["image"])
        return item


class ImageFolderDataModule(SemmaeDataModule):
    """loader: SemmaeDataModule's settings, batch_size (64 by default), eval_batch_size, num_workers, pin_memory,
    train_subset, val_subset, seed, loader_timeout_s, and mean / std (ImageNet's, timm's constants, by default)."""

    def __init__(
        self,
        root: str | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        img_size: int = 224,
        channels: int = 3,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        num_classes: int | None = None,
        name: str = "imagefolder",
        decode: str = "auto",
        skip_corrupt: bool = False,
        **loader: Any,
    ):
        if root is None:
            raise ConfigError("ImageFolder data needs dataset.root=DIR (with train/ and val/ class folders)")
        if channels != 3:
            raise ConfigError("ImageFolder data is decoded as RGB: dataset.channels must be 3")
        if decode not in ("auto", "workers", "device"):
            raise ConfigError(f"dataset.decode must be auto, workers or device, got {decode}")
        loader.setdefault("batch_size", 64)
        loader.setdefault("mean", IMAGENET_DEFAULT_MEAN)
        loader.setdefault("std", IMAGENET_DEFAULT_STD)
        super().__init__(name=name, **loader)
        self.root = Path(root).expanduser()
        self.train_dir, self.val_dir = train_dir, val_dir
        self.img_size, self.channels = int(img_size), 3
        self.crop_scale = tuple(crop_scale)
        self.num_classes = num_classes
        self.decode = decode
        self.skip_corrupt = bool(skip_corrupt)
        self.datasets: dict[str, Dataset] = {}
        self._scans: dict[str, ImageFolder] = {}
        self.sample_hooks: dict[str, Callable] = {}  # key -> fn(augmented image) run in the workers (provide)

    def transform(self, train: bool):
        norm = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        if train:
            return T.Compose(
                [
                    T.RandomResizedCrop(
                        self.img_size, scale=self.crop_scale, interpolation=T.InterpolationMode.BICUBIC
                    ),
                    T.RandomHorizontalFlip(),
                ]
                + norm
            )
        resize = int(round(self.img_size / 0.875))
        return T.Compose(
            [T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(self.img_size)] + norm
        )

    def on_device(self) -> bool:
        """True when batches are decoded on the training device (decode=device, or auto on a GPU). Decided when the
        splits are set up: a datamodule set up before it meets its trainer (fine-tuning's augmentation, the feature
        cache) keeps decoding in the workers."""
        if self.datasets:
            return isinstance(self.datasets["train"], jpeg_decode.EncodedImageFolder)
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
            self._scans[name] = disk_images.image_folder(path)
        return self._scans[name]

    def _folder(self, split: str, train: bool) -> Dataset:
        ds = self._scan(self.train_dir if split == "train" else self.val_dir)
        indices = self.subset(len(ds), split, ds.targets)
        if self.on_device():
            return jpeg_decode.EncodedImageFolder(ds, indices, skip_corrupt=self.skip_corrupt)
        return DictDataset(
            ds,
            indices,
            self.transform(train),
            self.transform(False) if train else None,
            skip_corrupt=self.skip_corrupt,
            hooks=self.sample_hooks,
        )

    def prepare_data(self) -> None:
        """Scan both splits (a bad tree fails before training starts) and take the class count from the folders:
        the training split's class folders are the classes, the validation split must have the same ones, and a
        dataset.num_classes that was given must agree (labels are folder indices)."""
        train, val = (self._scan(name) for name in (self.train_dir, self.val_dir))
        if train.classes != val.classes:
            only = sorted(set(train.classes) ^ set(val.classes))
            raise DataError(
                f"{self.root / self.train_dir} and {self.root / self.val_dir} have different class "
                f"folders (e.g. {', '.join(only[:3]) or 'in another order'}): the labels would not agree"
            )
        found = len(train.classes)
        if self.num_classes is not None and int(self.num_classes) != found:
            raise ConfigError(
                f"dataset.num_classes={self.num_classes}, but {self.root / self.train_dir} has {found} "
                "class folders: drop dataset.num_classes (null takes it from the folders) or fix the tree"
            )
        self.num_classes = found

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.datasets = {"train": self._folder("train", True), "val": self._folder("val", False)}

    # --- the SemmaeDataModule interface --------------------------------------------------------------------
    def split_size(self, split: str) -> int:
        self.setup()
        return len(self.datasets[split])

    def split_dataset(self, split: str, train: bool) -> Dataset:
        ds = self.datasets[split]
        if train == (split == "train") or not isinstance(ds, DictDataset):  # encoded bytes: the view is decided later
            return ds
        return DictDataset(
            ds.base,
            ds.indices,
            self.transform(train),
            self.transform(False) if train else None,
            skip_corrupt=self.skip_corrupt,
            hooks=self.sample_hooks,
        )

    def collate_fn(self, dataset: Dataset) -> Callable[[list[Any]], Any]:
        encoded = isinstance(getattr(dataset, "dataset", dataset), jpeg_decode.EncodedImageFolder)  # also in a Subset
        return jpeg_decode.collate_encoded if encoded else disk_images.collate_readable

    @property
    def train_augmentation_kind(self) -> str | None:
        """ "image" when the workers decode (a PIL image per sample); None when the device decodes and augments."""
        return None if self.on_device() else "image"

    @property
    def train_augmentation(self):
        self.setup()
        return getattr(self.datasets["train"], "transform", None)

    def set_train_augmentation(self, transform) -> None:
        """The workers apply transform to each training image; the un-augmented view ("image_plain", only
        pretraining's online probe reads it) is no longer decoded for training batches."""
        self.setup()
        train = self.datasets["train"]
        if not isinstance(train, DictDataset):
            raise ConfigError(
                f"{self.name}: dataset.decode=device decodes and augments the batch on the device; "
                "a per-image training augmentation needs dataset.decode=workers"
            )
        train.transform, train.plain_transform = transform, None

    def provide(self, key: str, producer: Callable | None = None, needed_by: str = "the model") -> None:
        """A producer runs on each augmented image in the DataLoader workers, so the workers must decode (decode=auto
        then decodes there; decode=device is refused). An ImageFolder holds no per-image maps: producer None is
        refused."""
        if producer is None:
            raise ConfigError(
                f"{needed_by} reads batch['{key}'] from the dataset, and an ImageFolder has none: use "
                "masking.segmenter=slic or color_kmeans with ImageFolder data"
            )
        if self.decode == "device":
            raise ConfigError(
                f"{needed_by} computes batch['{key}'] per image in the DataLoader workers, but "
                "dataset.decode=device decodes on the device: use dataset.decode=workers (or auto)"
            )
        self.decode = "workers"
        self.datasets = {}
        self.sample_hooks[key] = producer

    # --- device decoding (decode=device) -------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "jpeg" in batch:  # bytes stay on the CPU: decode_jpeg reads them there
            return {
                k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
            }
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def augment_batch(self, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        if "jpeg" not in batch:
            return batch
        device = batch["label"].device
        return jpeg_decode.device_batch(
            batch, device, self.img_size, train, self.mean, self.std, self.crop_scale, skip_corrupt=self.skip_corrupt
        )
