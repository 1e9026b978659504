"""The linear probe's feature cache: the frozen encoder's features of the un-augmented images of the train and
validation splits, computed once and then served in batches from memory, so the head trains on them for every
epoch at no further encoder cost (the fast path on CPU). Without augmentation, as MAE's probe uses only light
augmentation; turn it off (model.feature_cache=false) to train on augmented images instead."""

from __future__ import annotations

from typing import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader

from semmae.data.datamodule import ImageDataModule
from semmae.data.imagefolder import DictDataset, ImageFolderDataModule
from semmae.data.resident import ResidentBatches
from semmae.errors import ConfigError


def plain_batches(datamodule: L.LightningDataModule, split: str, device: torch.device) -> Iterator[tuple]:
    """(images, labels) of a split in order, with the evaluation transform (no augmentation), on device."""
    datamodule.setup("fit")
    if isinstance(datamodule, ImageDataModule):
        images, labels = datamodule.data[split]
        step = datamodule.eval_batch_size
        for start in range(0, len(labels), step):
            batch = images[start : start + step].to(device, non_blocking=True)
            yield datamodule.eval_transform(batch), labels[start : start + step].to(device)
    elif isinstance(datamodule, ImageFolderDataModule):
        base = datamodule.datasets[split]
        ds = DictDataset(base.base, base.indices, datamodule.transform(False))
        loader = DataLoader(ds, batch_size=datamodule.eval_batch_size, shuffle=False,
                            num_workers=datamodule.num_workers)
        for batch in loader:
            yield batch["image"].to(device, non_blocking=True), batch["label"].to(device)
    else:
        raise ConfigError(f"the feature cache does not know how to read {type(datamodule).__name__}: "
                          "set model.feature_cache=false")


def extract_features(encode: Callable[[torch.Tensor], torch.Tensor], datamodule: L.LightningDataModule,
                     split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (features [N, D] float32, labels [N]) on device."""
    feats, labels = [], []
    for images, y in plain_batches(datamodule, split, device):
        feats.append(encode(images))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


class FeatureBatches(ResidentBatches):
    """ResidentBatches over a feature tensor [N, D]: the batch carries it as "feature"."""

    def __iter__(self):
        for batch in super().__iter__():
            batch["feature"] = batch.pop("image")
            yield batch


class FeatureDataModule(L.LightningDataModule):
    """Cached features and labels of the train and validation splits; shuffled fixed-size training batches."""

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                 batch_size: int, eval_batch_size: int, seed: int = 0, name: str = "features"):
        super().__init__()
        self.splits = {"train": train, "val": val}
        self.batch_size, self.eval_batch_size, self.seed, self.name = int(batch_size), int(eval_batch_size), seed, name
        if len(train[1]) < self.batch_size:
            raise ConfigError(f"{len(train[1])} training samples are fewer than one batch of {self.batch_size}: "
                              "lower dataset.batch_size")

    @classmethod
    def from_images(cls, datamodule: L.LightningDataModule, encode: Callable[[torch.Tensor], torch.Tensor],
                    device: torch.device, seed: int = 0) -> "FeatureDataModule":
        splits = {split: extract_features(encode, datamodule, split, device) for split in ("train", "val")}
        return cls(splits["train"], splits["val"], datamodule.batch_size, datamodule.eval_batch_size, seed,
                   name=f"{getattr(datamodule, 'name', type(datamodule).__name__)} (cached features)")

    def _loader(self, split: str, train: bool) -> DataLoader:
        feats, labels = self.splits[split]
        ds = FeatureBatches(feats, labels, self.batch_size if train else self.eval_batch_size, train=train,
                            seed=self.seed)
        ds.epoch_fn = lambda: self.trainer.current_epoch if self.trainer is not None else 0
        return DataLoader(ds, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("val", False)
