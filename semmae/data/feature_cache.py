"""The probes' feature cache: what the frozen encoder gives of the un-augmented images of the train and validation
splits, computed once and then served in batches from memory, so a head trains on it for every epoch at no further
encoder cost (the fast path on CPU). What is cached is one tensor per image and "view", as the encode function names
them: a pooled feature [D] for the linear probe and k-NN, every token of a block [T, D] (in bf16) for the attentive
probes; a batch carries the view a head reads as "feature". Without augmentation, as MAE's probe uses only light
augmentation; turn it off (model.feature_cache=false) to train on augmented images instead. A run that reads only
part of a split (debug=fast_dev_run, trainer.limit_*_batches, trainer.max_steps) encodes only that part."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from semmae.data.interface import SemmaeDataModule
from semmae.data.loaders import subset_indices
from semmae.data.resident import ResidentBatches
from semmae.errors import ConfigError


def batches_read(limit: int | float | None, length: int) -> int:
    """Lightning's limit_*_batches: None = all, an int = that many (at most all), a float = that share."""
    if limit is None:
        return length
    return min(length, limit) if isinstance(limit, int) else int(length * limit)


def images_read(limits: Mapping[str, Any] | None, total: int, batch_size: int, train: bool) -> int:
    """How many of a split's images a run under the trainer's limits reads (LinearProbeTask.cache_limits: the
    trainer's fast_dev_run, limit_{train,val,test}_batches, max_steps x accumulate_grad_batches, devices x num_nodes),
    at most total. The training split loses its incomplete batch, the validation split (also the test set) keeps it."""
    limits = dict(limits or {})
    devices, nodes = limits.get("devices", 1), limits.get("num_nodes", 1)
    if type(devices) is not int or type(nodes) is not int or min(devices, nodes) < 1 or limits.get("overfit_batches"):
        return total  # devices=auto, a device list, overfit_batches: read as Lightning decides
    world = devices * nodes
    per_rank = total // world if train else math.ceil(total / world)
    length = per_rank // batch_size if train else math.ceil(per_rank / batch_size)
    fast = limits.get("fast_dev_run")
    if fast:
        n = min(length, int(fast))
    elif train:
        n = batches_read(limits.get("limit_train_batches"), length)
        max_steps = limits.get("max_steps")
        if max_steps is not None and max_steps >= 0:  # -1: no limit
            n = min(n, max_steps * limits.get("accumulate_grad_batches", 1))
    else:
        n = max(batches_read(limits.get(key), length) for key in ("limit_val_batches", "limit_test_batches"))
    return total if n >= length else max(1, n) * batch_size * world  # every batch: every image (over the epochs)


Features = torch.Tensor | dict[str, torch.Tensor]  # one view, or several by name


def extract_features(
    encode: Callable[[torch.Tensor], Features],
    datamodule: L.LightningDataModule,
    split: str,
    device: torch.device,
    indices: list[int] | None = None,
) -> tuple[Features, torch.Tensor]:
    """-> (features, labels [N]) on device of the split's images in order (only those at indices, if given) in the
    datamodule's evaluation view (no augmentation: eval_batches). features: what encode gives of a batch of images
    ([B, ...], or {view: [B, ...]}), concatenated over the batches."""
    feats, labels = [], []
    for batch in datamodule.eval_batches(split, device, indices=indices):
        if "label" not in batch:
            raise ConfigError(
                f"the feature cache needs labelled images, and {datamodule.name}'s batches have no "
                "'label': set model.feature_cache=false"
            )
        feats.append(encode(batch["image"]))
        labels.append(batch["label"])
    if feats and isinstance(feats[0], dict):
        return {view: torch.cat([f[view] for f in feats]) for view in feats[0]}, torch.cat(labels)
    return torch.cat(feats), torch.cat(labels)


def cache_indices(
    datamodule: SemmaeDataModule, limits: Mapping[str, Any] | None, seed: int = 0
) -> dict[str, list[int] | None]:
    """{split: the indices of the images the cache encodes, None for all}: what the run reads (images_read) under
    the trainer's limits, the first images of the validation split (read in order) and a fixed random subset of the
    training split (reshuffled every epoch)."""
    out = {}
    for split, train, batch in (("train", True, datamodule.batch_size), ("val", False, datamodule.eval_batch_size)):
        total = datamodule.split_size(split)
        n = images_read(limits, total, batch, train)
        out[split] = None if n == total else subset_indices(total, n, seed) if train else list(range(n))
    return out


class FeatureBatches(ResidentBatches):
    """ResidentBatches over a feature tensor [N, ...]: the batch carries it as "feature"."""

    def __iter__(self):
        for batch in super().__iter__():
            batch["feature"] = batch.pop("image")
            yield batch


class FeatureDataModule(SemmaeDataModule):
    """Cached features and labels of the train and validation splits; shuffled fixed-size training batches. A split's
    features are one tensor, or several views by name, of which `view` is served."""

    def __init__(
        self,
        train: tuple[Features, torch.Tensor],
        val: tuple[Features, torch.Tensor],
        batch_size: int,
        eval_batch_size: int,
        seed: int = 0,
        name: str = "features",
        view: str | None = None,
        train_repeat: int = 1,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=0, seed=seed, name=name)
        self.splits = {"train": train, "val": val}
        self.view = view
        self.train_repeat = train_repeat  # passes over the training set an epoch (ResidentBatches' repeat)
        if len(train[1]) < self.batch_size:
            raise ConfigError(
                f"{len(train[1])} training samples are fewer than one batch of {self.batch_size}: "
                "lower dataset.batch_size"
            )
        for split, (feats, _) in self.splits.items():
            if isinstance(feats, dict) and view not in feats:
                raise ConfigError(f"the feature cache of {split} holds {sorted(feats)}, not the view {view!r}")

    @classmethod
    def from_images(
        cls,
        datamodule: L.LightningDataModule,
        encode: Callable[[torch.Tensor], Features],
        device: torch.device,
        seed: int = 0,
        limits: Mapping[str, Any] | None = None,
        view: str | None = None,
        val: tuple[Features, torch.Tensor] | None = None,
        batch_size: int | None = None,
    ) -> FeatureDataModule:
        """Encodes what the run reads (cache_indices): all of a split, or under limits (by default the cache_limits
        of the task whose encode this is) a part of it. val: an already encoded validation split to reuse (e.g. that
        of another training subset of the same run). batch_size: the training batch (default: the datamodule's)."""
        if not isinstance(datamodule, SemmaeDataModule):
            raise ConfigError(
                f"the feature cache does not know how to read {type(datamodule).__name__}: "
                "set model.feature_cache=false"
            )
        if limits is None:
            limits = getattr(getattr(encode, "__self__", None), "cache_limits", None)
        indices = cache_indices(datamodule, limits, seed)
        train = extract_features(encode, datamodule, "train", device, indices["train"])
        val = val if val is not None else extract_features(encode, datamodule, "val", device, indices["val"])
        return cls(
            train,
            val,
            batch_size or datamodule.batch_size,
            datamodule.eval_batch_size,
            seed,
            name=f"{datamodule.name} (cached features)",
            view=view,
        )

    def with_view(
        self, view: str, batch_size: int | None = None, seed: int | None = None, train_repeat: int | None = None
    ) -> FeatureDataModule:
        """The same cached tensors, serving another view (and training batch, seed, passes an epoch)."""
        return type(self)(
            self.splits["train"],
            self.splits["val"],
            batch_size or self.batch_size,
            self.eval_batch_size,
            self.seed if seed is None else seed,
            self.name,
            view,
            self.train_repeat if train_repeat is None else train_repeat,
        )

    def features(self, split: str) -> torch.Tensor:
        """The served view of a split [N, ...]."""
        feats = self.splits[split][0]
        return feats[self.view] if isinstance(feats, dict) else feats

    def labels(self, split: str) -> torch.Tensor:
        return self.splits[split][1]

    def split_size(self, split: str) -> int:
        return len(self.splits[split][1])

    def _batches(self, feats: torch.Tensor, labels: torch.Tensor, train: bool, shard: bool = True) -> Dataset:
        ds = FeatureBatches(
            feats,
            labels,
            self.batch_size if train else self.eval_batch_size,
            train=train,
            seed=self.seed,
            shard=shard,
            repeat=self.train_repeat,
        )
        ds.epoch_fn = lambda: self.trainer.current_epoch if self.trainer is not None else 0
        return ds

    def split_dataset(self, split: str, train: bool) -> Dataset:
        return self._batches(self.features(split), self.labels(split), train)

    def eval_dataset(self, split: str, indices: list[int] | None = None) -> Dataset:
        feats, labels = self.features(split), self.labels(split)
        if indices is not None:
            idx = torch.tensor(list(indices), dtype=torch.long, device=labels.device)
            feats, labels = feats[idx], labels[idx]
        return self._batches(feats, labels, False, shard=False)

    @property
    def in_memory(self) -> bool:
        return True
