"""The datamodule for in-memory classification images (Fashion-MNIST, CIFAR). Subclasses say where the images come
from; this class decides how they reach the model: resident (whole uint8 tensor on the training device, batched
augmentation after transfer, no workers) or per-image torchvision transforms in DataLoader workers."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from semmae.data.augment import BatchEvalTransform, BatchTrainAugment, expand_channels
from semmae.data.interface import SemmaeDataModule
from semmae.data.resident import ResidentBatches
from semmae.errors import ConfigError

log = logging.getLogger(__name__)


class ArrayDataset(Dataset):
    """uint8 [N, C, H, W] images + labels with a per-image torchvision transform (the worker path).

    maps: per-image integer maps [N, H, W] (e.g. segment maps) that get the image's own crop and flip (nearest);
    hooks: {key: fn} computed from each transformed image in the worker (e.g. SLIC superpixels) and batched with it."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform,
        channels: int,
        plain_transform=None,
        maps: dict[str, torch.Tensor] | None = None,
        hooks: dict[str, Callable] | None = None,
    ):
        self.images, self.labels, self.transform, self.channels = images, labels, transform, channels
        self.plain_transform = plain_transform
        self.maps, self.hooks = dict(maps or {}), dict(hooks or {})

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"label": self.labels[i], "index": i}
        for key, transform in (("image", self.transform), ("image_plain", self.plain_transform)):
            if transform is None:
                continue
            if key == "image" and self.maps:
                keys = list(self.maps)
                image, *maps = transform(self.images[i], *(tv_tensors.Mask(self.maps[k][i]) for k in keys))
                item.update({k: m.as_subclass(torch.Tensor) for k, m in zip(keys, maps)})
            else:
                image = transform(self.images[i])
            item[key] = expand_channels(image[None], self.channels)[0]
        for key, hook in self.hooks.items():
            item[key] = hook(item["image"])
        return item


class ImageDataModule(SemmaeDataModule):
    """Base class; subclasses implement load_arrays(train) -> (uint8 [N, C, H, W], int64 [N])."""

    num_classes: int = 0
    source_channels: int = 3

    def __init__(
        self,
        img_size: int = 32,
        channels: int | None = None,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        resident: bool = True,
        resident_device: str = "auto",
        crop_scale: tuple[float, float] = (0.2, 1.0),
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.5,),
        train_subset: int | None = None,
        val_subset: int | None = None,
        seed: int = 0,
        pin_memory: bool | str = "auto",
        name: str | None = None,
        num_classes: int | None = None,
        train_per_class: int | None = None,
    ):
        if num_classes is not None and self.num_classes and int(num_classes) != self.num_classes:
            raise ConfigError(f"dataset.num_classes={num_classes}, but {type(self).__name__} has {self.num_classes}")
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            train_subset=train_subset,
            val_subset=val_subset,
            seed=seed,
            name=name,
            mean=mean,
            std=std,
            train_per_class=train_per_class,
        )
        self.img_size = int(img_size)
        self.channels = int(channels or self.source_channels)
        if self.channels not in (1, 3):
            raise ConfigError(f"dataset.channels must be 1 or 3, got {self.channels}")
        if self.channels < self.source_channels:
            raise ConfigError(f"dataset.channels={self.channels} but the images have {self.source_channels} channels")
        self.resident = bool(resident)
        self.resident_device = resident_device
        self.crop_scale = tuple(float(s) for s in crop_scale)
        self.train_augment = BatchTrainAugment(self.img_size, self.mean, self.std, self.channels, self.crop_scale)
        self.eval_transform = BatchEvalTransform(self.img_size, self.mean, self.std, self.channels)
        self.data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.maps: dict[str, dict[str, torch.Tensor]] = {}  # split -> {key: per-image integer map [N, H, W]}
        self.sample_hooks: dict[str, Callable] = {}  # key -> fn(augmented image) run in the workers

    # --- what subclasses provide -------------------------------------------------------------------------
    @abstractmethod
    def load_arrays(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's images as uint8 [N, C, H, W] and labels as int64 [N]."""

    def map_keys(self) -> tuple[str, ...]:
        """The batch entries load_maps provides (at most one: it shares the image's crop and flip). Default: none."""
        return ()

    def load_maps(self, images: torch.Tensor, train: bool) -> dict[str, torch.Tensor]:
        """{key: per-image integer map [N, H, W]} aligned with the split's images (after the subset), e.g. segment
        maps; each map gets its image's crop and flip and reaches the model as batch[key]. Default: none."""
        return {}

    def how_to_provide(self, key: str) -> str:
        """The fix to print when a batch entry is asked for that this datamodule does not provide."""
        return f"{self.name} provides no batch['{key}']"

    # --- extra batch entries asked for by the model (e.g. segment maps for semantic masking) ----------------
    def provide(self, key: str, producer: Callable | None = None, needed_by: str = "the model") -> None:
        """Make every batch carry batch[key]. producer None: the dataset must have it (load_maps), else a
        ConfigError says how to get it. producer fn: fn(augmented image [C, H, W]) runs per sample in the
        DataLoader's workers, so the resident path (no workers) is switched off."""
        if producer is None:
            if key not in self.map_keys():
                raise ConfigError(f"{needed_by} reads batch['{key}']: {self.how_to_provide(key)}")
            return
        if self.resident:
            log.info(
                "dataset.resident=false: %s computes batch['%s'] per image in the DataLoader workers", needed_by, key
            )
            self.resident = False
            self.data, self.maps = {}, {}
        self.sample_hooks[key] = producer

    # --- set-up ------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        if self.resident_device != "auto":
            return torch.device(self.resident_device)
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _subset(self, images, labels, split):
        indices = self.subset(len(labels), split, labels)
        if indices is None:
            return images, labels
        idx = torch.tensor(indices)
        return images[idx], labels[idx]

    def setup(self, stage: str | None = None) -> None:
        if self.data:
            return
        for split, train in (("train", True), ("val", False)):
            images, labels = self._subset(*self.load_arrays(train), split)
            maps = self.load_maps(images, train)
            if self.resident:
                dev = self._device()
                images, labels = images.to(dev).contiguous(), labels.to(dev)
                maps = {k: m.to(dev) for k, m in maps.items()}
            self.data[split] = (images, labels)
            self.maps[split] = maps

    # --- loaders -----------------------------------------------------------------------------------------
    def _epoch(self) -> int:
        trainer = self.trainer
        return trainer.current_epoch if trainer is not None else 0

    def split_size(self, split: str) -> int:
        self.setup()
        return len(self.data[split][1])

    def _split_data(self, train: bool, images, labels, maps, shard: bool = True) -> Dataset:
        if self.resident:
            ds = ResidentBatches(
                images,
                labels,
                self.batch_size if train else self.eval_batch_size,
                train=train,
                seed=self.seed,
                maps=maps,
                shard=shard,
            )
            ds.epoch_fn = self._epoch
            return ds
        return ArrayDataset(
            images,
            labels,
            self._worker_transform(train),
            self.channels,
            self._worker_transform(False) if train else None,
            maps=maps,
            hooks=self.sample_hooks,
        )

    def split_dataset(self, split: str, train: bool) -> Dataset:
        images, labels = self.data[split]
        return self._split_data(train, images, labels, self.maps.get(split))

    def eval_dataset(self, split: str, indices: list[int] | None = None) -> Dataset:
        """All of split (or the images at indices), in order and unsharded, in the evaluation view; its maps
        travel with the batch."""
        images, labels = self.data[split]
        maps = dict(self.maps.get(split) or {})
        if indices is not None:
            idx = torch.tensor(list(indices), dtype=torch.long)
            images, labels = images[idx.to(images.device)], labels[idx.to(labels.device)]
            maps = {k: m[idx.to(m.device)] for k, m in maps.items()}
        return self._split_data(False, images, labels, maps, shard=False)

    def _worker_transform(self, train: bool):
        """torchvision transforms on one uint8 [C, H, W] image, same recipe as the batched path."""
        ops = [v2.RandomResizedCrop(self.img_size, scale=self.crop_scale, antialias=True), v2.RandomHorizontalFlip()]
        if not train:
            ops = [v2.Resize((self.img_size, self.img_size), antialias=True)]
        return v2.Compose(ops + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    # --- on-device augmentation of resident batches --------------------------------------------------------
    def augment_batch(self, batch: dict[str, Any], train: bool) -> dict[str, Any]:
        """Training batches get the augmented view as "image" and the un-augmented (evaluation) view as
        "image_plain", which the online probe uses; evaluation batches get the evaluation view."""
        images = batch["image"]
        if images.dtype != torch.uint8:  # already transformed by the worker path
            return batch
        maps = self.maps.get("train" if train else "val") or {}
        if maps:  # the integer map follows its image through the same crop and flip
            ((key, all_maps),) = maps.items()
            m = batch[key] if key in batch else all_maps.index_select(0, batch["index"].to(all_maps.device))
            m = m.to(images.device)
            if not train:
                image, m = self.eval_transform(images, label_maps=m)
                return {**batch, "image": image, key: m}
            image, m = self.train_augment(images, label_maps=m)
            return {**batch, "image": image, "image_plain": self.eval_transform(images), key: m}
        if not train:
            return {**batch, "image": self.eval_transform(images)}
        return {**batch, "image": self.train_augment(images), "image_plain": self.eval_transform(images)}

    # --- what callers may ask ------------------------------------------------------------------------------
    @property
    def in_memory(self) -> bool:
        return True

    @property
    def train_augmentation_kind(self) -> str | None:
        """ "batch" on the resident path (augmented on the device); the worker path's transforms are fixed."""
        return "batch" if self.resident else None

    @property
    def train_augmentation(self):
        return self.train_augment

    def set_train_augmentation(self, transform) -> None:
        if not self.resident:
            raise ConfigError(
                f"{self.name}: dataset.resident=false augments each image in the DataLoader workers; "
                "a batched training augmentation needs dataset.resident=true"
            )
        self.train_augment = transform
