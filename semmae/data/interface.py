"""The interface every semmae datamodule answers, so that callers (the tasks, the feature cache, fine-tuning's
augmentation, `semmae-analyze`, `semmae-masks`) never test a datamodule's class or read its internals:

- loader settings: `batch_size`, `eval_batch_size`, `num_workers`, `pin_memory`, `loader_timeout_s`,
  `train_subset` / `val_subset` / `train_per_class` (+ `seed`), `name`, and the normalisation `mean` / `std` of the
  images it gives;
- one DataLoader builder (`dataloader`, through semmae.data.loaders.split_loader) behind train/val/test_dataloader;
  a subclass says which dataset a split's loader reads (`split_dataset`) and how its items are batched
  (`collate_fn`);
- `augment_batch(batch, train)`: what happens to a batch once it is on the training device (Lightning's
  on_after_batch_transfer calls it); the identity unless the datamodule augments there;
- `eval_batches(split, device, limit, indices)`: the split in order in its evaluation view (un-augmented,
  evaluation-transformed, as the validation loop sees it), on a device;
- `split_size(split)`: how many images a split has (after its subset);
- `in_memory`: True when the whole data set is held in memory (the linear probe's feature cache is then the default);
- `train_augmentation_kind` / `train_augmentation` / `set_train_augmentation(transform)`: the training augmentation,
  replaceable by a per-image ("image") or a batched ("batch") transform, or not at all (None);
- `provide(key, producer, needed_by)`: make batches carry an entry a masking strategy reads (segment maps,
  superpixels), or say in one line why this data cannot."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from semmae.data.loaders import auto_num_workers, split_loader, subset_indices
from semmae.data.low_shot import check_per_class, class_balanced_subset
from semmae.data.resident import ResidentBatches
from semmae.errors import ConfigError


class SubsetWarning(UserWarning):
    """A dataset.train_subset / val_subset larger than its split: all of the split is used."""


def batch_length(batch: dict[str, Any]) -> int:
    """Number of samples in a dict batch: the length of its "index", else of its first tensor or list."""
    if "index" in batch:
        return len(batch["index"])
    for value in batch.values():
        if (torch.is_tensor(value) and value.ndim) or isinstance(value, list):
            return len(value)
    raise ValueError(f"cannot tell the size of a batch with entries {sorted(batch)}")


def head(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first n samples of a dict batch (tensors and lists are cut, other entries kept)."""
    return {k: v[:n] if (torch.is_tensor(v) and v.ndim) or isinstance(v, list) else v for k, v in batch.items()}


class SemmaeDataModule(L.LightningDataModule, ABC):
    """Base class of semmae's datamodules (see the module docstring). Subclasses build their splits in `setup`
    (which must be cheap to call again) and implement split_dataset and split_size."""

    def __init__(
        self,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        train_subset: int | None = None,
        val_subset: int | None = None,
        seed: int = 0,
        name: str | None = None,
        loader_timeout_s: float = 600.0,
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.5,),
        train_per_class: int | None = None,
    ):
        super().__init__()
        if int(batch_size) < 1:
            raise ConfigError(f"dataset.batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and int(eval_batch_size) < 1:
            raise ConfigError(
                f"dataset.eval_batch_size must be >= 1 (or null: dataset.batch_size), got {eval_batch_size}"
            )
        for key, value in (("train_subset", train_subset), ("val_subset", val_subset)):
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ConfigError(f"dataset.{key}={value}: must be a number of images >= 1, or null for all of them")
        if float(loader_timeout_s) < 0:
            raise ConfigError(f"dataset.loader_timeout_s must be >= 0 (0: wait forever), got {loader_timeout_s}")
        self.name = name or type(self).__name__
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = auto_num_workers() if num_workers == "auto" else int(num_workers)
        self.pin_memory = pin_memory
        self.train_subset, self.val_subset = train_subset, val_subset
        self.train_per_class = check_per_class(train_per_class)
        self.train_pool_size: int | None = None
        if self.train_per_class is not None and train_subset is not None:
            raise ConfigError(
                "dataset.train_per_class and dataset.train_subset both choose the training images: "
                "set dataset.train_subset=null"
            )
        self.seed = int(seed)
        self.loader_timeout_s = float(loader_timeout_s)
        self.mean, self.std = tuple(mean), tuple(std)

    # --- what subclasses provide -------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build the splits; called again before every loader, so it must return at once once they are built."""

    @abstractmethod
    def split_dataset(self, split: str, train: bool) -> Dataset:
        """What the loader of split reads: train=True the training view (augmented), False the evaluation view
        (of either split). A ResidentBatches yields whole batches; any other dataset yields samples."""

    @abstractmethod
    def split_size(self, split: str) -> int:
        """Number of images in split, after its subset."""

    def collate_fn(self, dataset: Dataset) -> Callable[[list[Any]], Any] | None:
        """How the loader batches dataset's samples (None: torch's default_collate)."""
        return None

    def eval_dataset(self, split: str, indices: list[int] | None = None) -> Dataset:
        """The evaluation view of split (only the samples at indices, in that order, if given), for eval_batches."""
        dataset = self.split_dataset(split, train=False)
        return dataset if indices is None else Subset(dataset, list(indices))

    # --- loaders -----------------------------------------------------------------------------------------
    def subset(self, total: int, split: str, labels: Any = None) -> list[int] | None:
        """The fixed random subset of a split of total items (dataset.train_subset / val_subset), or of the training
        split dataset.train_per_class images of every class (seeded, class-balanced: semmae.data.low_shot), which
        needs the split's labels; None: all. A subset larger than the split is all of it, with a warning that says
        so."""
        if split == "train" and self.train_per_class is not None:
            if labels is None:
                raise ConfigError(f"dataset.train_per_class: {self.name} has no class labels to balance")
            self.train_pool_size = total  # the images the subset is drawn from (a low-shot probe's schedule reads it)
            return class_balanced_subset(torch.as_tensor(labels), self.train_per_class, self.seed)
        key = "train_subset" if split == "train" else "val_subset"
        n = getattr(self, key)
        if n is not None and int(n) > total:
            warnings.warn(
                f"dataset.{key}={n} is more than the {total} images of {self.name}'s {split} split: using all {total}",
                SubsetWarning,
                stacklevel=2,
            )
        return subset_indices(total, n, self.seed)

    def loader(self, dataset: Dataset, train: bool) -> DataLoader:
        """The one DataLoader builder: split_loader with this datamodule's settings."""
        batch_size = self.batch_size if train else self.eval_batch_size
        if isinstance(dataset, ResidentBatches):  # yields whole batches
            batch_size = None
        return split_loader(
            dataset,
            batch_size,
            train,
            self.num_workers,
            self.pin_memory,
            collate_fn=self.collate_fn(dataset),
            timeout_s=self.loader_timeout_s,
        )

    def dataloader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        loader = self.loader(self.split_dataset(split, train), train)
        if train and len(loader) == 0:  # training drops the incomplete batch: a run that would train nothing
            raise ConfigError(
                f"dataset.batch_size={self.batch_size} is more than the {self.split_size(split)} training "
                f"images of {self.name} (per process): there is no training batch; lower "
                "dataset.batch_size or train on more images (dataset.train_subset)"
            )
        return loader

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("val", False)

    # --- batches on the device ---------------------------------------------------------------------------
    def augment_batch(self, batch: Any, train: bool) -> Any:
        """A batch on the training device -> what the model reads (training: augmented). Default: unchanged."""
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        return self.augment_batch(batch, train=bool(trainer is not None and trainer.training))

    def eval_batches(
        self,
        split: str = "val",
        device: torch.device | str | None = None,
        limit: int | None = None,
        indices: list[int] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The batches of split in order (only those at indices, if given; at most limit images, if given) in the
        evaluation view, moved to device (None: where the loader leaves them) and evaluation-transformed there,
        as the validation loop sees them; eval_batch_size images a batch. All of the split on every process
        (no sharding over DDP ranks)."""
        self.setup()
        left = None if limit is None else int(limit)
        if left is not None and left <= 0:
            return
        dev = None if device is None else torch.device(device)
        for batch in self.loader(self.eval_dataset(split, indices), train=False):
            if dev is not None:
                batch = self.transfer_batch_to_device(batch, dev, 0)
            batch = self.augment_batch(batch, train=False)
            if left is not None:
                n = batch_length(batch)
                if n > left:
                    batch = head(batch, left)
                left -= n
            yield batch
            if left is not None and left <= 0:
                return

    # --- what callers may ask ------------------------------------------------------------------------------
    @property
    def in_memory(self) -> bool:
        """True when the whole data set is held in memory (then the linear probe caches features by default)."""
        return False

    @property
    def train_augmentation_kind(self) -> str | None:
        """What set_train_augmentation takes: "image" (a per-image transform of a PIL image, e.g. timm's
        create_transform, run in the DataLoader workers), "batch" (fn(uint8 images [B, C, H, W], generator=None) ->
        normalised float images, run on the training device) or None (the training augmentation is fixed)."""
        return None

    @property
    def train_augmentation(self) -> Any:
        """The training augmentation set_train_augmentation replaces (None when it is fixed)."""
        return None

    def set_train_augmentation(self, transform: Callable) -> None:
        """Replace the training augmentation with transform, of the train_augmentation_kind."""
        raise ConfigError(f"{self.name} ({type(self).__name__}): the training augmentation cannot be replaced")

    def provide(self, key: str, producer: Callable | None = None, needed_by: str = "the model") -> None:
        """Make every batch carry batch[key], which a masking strategy asks for (MaskingStrategy.data_needs):
        producer None means the data set must hold it (e.g. segment maps); a function fn(augmented image [C, H, W])
        is run per image where the images are augmented. Default: nothing can be provided (one line says so)."""
        raise ConfigError(
            f"{needed_by} reads batch['{key}'], which {self.name} ({type(self).__name__}) cannot "
            "provide: choose another masking.segmenter or another dataset"
        )
