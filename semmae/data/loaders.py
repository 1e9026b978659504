"""What the datamodules' loaders share: the fixed random subset of a split (`dataset.train_subset` /
`val_subset`) and the DataLoader of a split (shuffled, dropping the last partial batch when training; workers kept
between epochs; pinned memory on CUDA by default; a worker that sends no batch for timeout_s ends the run with an
error instead of a hang), also for datasets that yield whole batches (in-memory data: read in the main process)."""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset


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


def split_loader(dataset: Dataset, batch_size: int | None, train: bool, num_workers: int, pin: bool | str,
                 collate_fn: Callable[[list[Any]], Any] | None = None, timeout_s: float = 600.0) -> DataLoader:
    """timeout_s: how long to wait for a worker's batch before raising (0: forever); no workers, no timeout.
    batch_size None: the dataset yields whole batches already on their device (semmae.data.resident), which the
    loader passes on as they are, from the main process (no workers, no pinning, no shuffling: the dataset orders)."""
    if batch_size is None:
        return DataLoader(dataset, batch_size=None, num_workers=0)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=pin_memory(pin),
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        timeout=timeout_s if num_workers > 0 else 0,
    )
