"""What the datamodules' loaders share: the fixed random subset of a split (`dataset.train_subset` /
`val_subset`) and the DataLoader of a split (shuffled, dropping the last partial batch when training; workers kept
between epochs; pinned memory on CUDA by default; a worker that sends no batch for timeout_s ends the run with an
error instead of a hang), also for datasets that yield whole batches (in-memory data: read in the main process)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from semmae.errors import DataError


def auto_num_workers() -> int:
    """dataset.num_workers=auto: one worker per CPU this process may use, less one for the main process, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus - 1))


def subset_indices(total: int, n: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a fixed random subset of n of total items, the same for a seed; None means all of them."""
    if n is None or n >= total:
        return None
    g = torch.Generator().manual_seed(seed + 17)
    return torch.randperm(total, generator=g)[: int(n)].sort().values.tolist()


def pin_memory(setting: bool | str) -> bool:
    """dataset.pin_memory: auto = on when CUDA is available."""
    return torch.cuda.is_available() if setting == "auto" else bool(setting)


def split_loader(
    dataset: Dataset,
    batch_size: int | None,
    train: bool,
    num_workers: int,
    pin: bool | str,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    timeout_s: float = 600.0,
) -> DataLoader:
    """timeout_s: how long to wait for a worker's batch before raising (0: forever); no workers, no timeout.
    batch_size None: the dataset yields whole batches already on their device (semmae.data.resident), which the
    loader passes on as they are, from the main process (no workers, no pinning, no shuffling: the dataset orders)."""
    if batch_size is None:
        return DataLoader(dataset, batch_size=None, num_workers=0)
    sampler = RandomSampler(dataset) if train else SequentialSampler(dataset)
    return WatchedLoader(
        dataset,
        batch_sampler=RecordingBatchSampler(sampler, batch_size, drop_last=train),
        num_workers=num_workers,
        pin_memory=pin_memory(pin),
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        timeout=timeout_s if num_workers > 0 else 0,
    )


class RecordingBatchSampler(BatchSampler):
    """A BatchSampler that remembers the batches it handed out since the loader's iterator (re)started, so that a
    batch that never arrives can be named."""

    def __iter__(self):
        self.sent: list[list[int]] = []
        for batch in super().__iter__():
            self.sent.append(batch)
            yield batch


class WatchedLoader(DataLoader):
    """A DataLoader whose worker timeout names the files of the batch it waited for (when the dataset can say which
    file an item reads: item_path(i)), as a DataError instead of torch's bare RuntimeError."""

    def __iter__(self):
        return WatchedIterator(super().__iter__(), self)


class WatchedIterator:
    def __init__(self, inner: Any, loader: WatchedLoader):
        self.inner, self.loader = inner, loader

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __next__(self) -> Any:
        try:
            return next(self.inner)
        except RuntimeError as exc:
            if "DataLoader timed out" not in str(exc):
                raise
            raise DataError(timeout_message(self.loader, getattr(self.inner, "_rcvd_idx", None))) from None


def timeout_message(loader: WatchedLoader, pending: int | None) -> str:
    sent = getattr(loader.batch_sampler, "sent", [])
    batch = sent[pending] if pending is not None and pending < len(sent) else []
    path_of = getattr(loader.dataset, "item_path", None)
    files = [str(path_of(i)) for i in batch] if callable(path_of) else []
    where = f"; it was reading {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}" if files else ""
    return (
        f"a DataLoader worker sent no batch for {loader.timeout:g} s (dataset.loader_timeout_s){where}: a file "
        "that blocks when read (a stalled network mount, a pipe) or a worker stuck otherwise; fix the data, or "
        "raise dataset.loader_timeout_s for slow storage"
    )
