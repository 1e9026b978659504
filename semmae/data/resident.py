"""In-memory batches for datasets that fit in memory (Fashion-MNIST, CIFAR): the whole uint8 tensor lives on one
device (CPU, or the GPU in GPU-resident mode) and batches are slices of it, drawn without per-image Python work.
Augmentation runs afterwards on the whole batch (semmae.data.augment), on the same device."""

from __future__ import annotations

import math

import torch
from torch.utils.data import IterableDataset


def dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResidentBatches(IterableDataset):
    """Yields {"image": uint8 [b, C, H, W], "label": [b], "index": [b], "valid": [b] bool} batches, plus each
    image's entry of every per-image map in maps ({key: [N, ...]}, e.g. segment maps or label masks) as batch[key].

    train=True: a fresh permutation every epoch (seeded by seed and epoch), each rank a disjoint equal share,
    incomplete batches dropped; repeat=r: an epoch passes over the data r times (a permutation of r copies), so that
    a small training set (a low-shot subset) gets as many steps an epoch as a large one. train=False: the data in
    order, split over ranks into the same number of batches; ranks short of data repeat their last sample with
    valid=False so metrics can ignore it.
    shard=False: every rank reads all of the data (as one process would)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        train: bool,
        seed: int = 0,
        maps: dict[str, torch.Tensor] | None = None,
        shard: bool = True,
        repeat: int = 1,
    ):
        super().__init__()
        self.images, self.labels, self.maps = images, labels, dict(maps or {})
        self.batch_size, self.train, self.seed, self.shard = int(batch_size), bool(train), int(seed), bool(shard)
        self.repeat = max(1, int(repeat)) if train else 1
        self.epoch_fn = lambda: 0  # the owner sets this to read the trainer's epoch, so resumed runs line up
        self.start_fn = lambda: 0  # training batches of the epoch already trained on: a mid-epoch resume skips them

    def _rank_world(self) -> tuple[int, int]:
        return dist_rank_world() if self.shard else (0, 1)

    def __len__(self) -> int:
        _, world = self._rank_world()
        n = len(self.labels)
        if self.train:
            return (n * self.repeat // world) // self.batch_size
        return math.ceil(math.ceil(n / world) / self.batch_size)

    def _indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        rank, world = self._rank_world()
        n = len(self.labels)
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100_003 + int(self.epoch_fn()))
            perm = torch.randperm(n * self.repeat, generator=g) % n
            per_rank = n * self.repeat // world
            idx = perm[rank * per_rank : (rank + 1) * per_rank]
            idx = idx[: len(idx) // self.batch_size * self.batch_size]
            return idx, torch.ones(len(idx), dtype=torch.bool)
        per_rank = math.ceil(n / world)
        idx = torch.arange(rank * per_rank, min(n, (rank + 1) * per_rank))
        valid = torch.ones(per_rank, dtype=torch.bool)
        if len(idx) < per_rank:  # pad the short rank so every rank runs the same number of steps
            valid[len(idx) :] = False
            fill = idx[-1:] if len(idx) else torch.zeros(1, dtype=torch.long)
            idx = torch.cat([idx, fill.repeat(per_rank - len(idx))])
        return idx, valid

    def __iter__(self):
        idx, valid = self._indices()
        device = self.images.device
        idx_dev = idx.to(device)
        first = int(self.start_fn()) * self.batch_size if self.train else 0
        for start in range(first, len(idx), self.batch_size):
            sel = idx_dev[start : start + self.batch_size]
            yield {
                "image": self.images.index_select(0, sel),
                "label": self.labels.index_select(0, sel),
                "index": sel,
                "valid": valid[start : start + self.batch_size].to(device),
                **{key: m.index_select(0, sel.to(m.device)) for key, m in self.maps.items()},
            }
