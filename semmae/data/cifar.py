"""CIFAR-10 / CIFAR-100 from torchvision's on-disk format (the python pickle batches), read directly so that
any copy in that layout works; downloaded with torchvision when missing and dataset.download=true."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from semmae.data.datamodule import ImageDataModule
from semmae.errors import ConfigError, DataError

LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def load_cifar(root: str, num_classes: int, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """-> uint8 images [N, 3, 32, 32], int64 labels [N]."""
    if root is None:
        raise ConfigError(f"CIFAR-{num_classes} needs dataset.root=DIR (the folder holding {LAYOUT[num_classes][0]}/)")
    folder, train_files, test_files, key = LAYOUT[num_classes]
    base = Path(root).expanduser() / folder
    files = [base / f for f in (train_files if train else test_files)]
    if not all(f.is_file() for f in files):
        if not download:
            raise DataError(
                f"CIFAR-{num_classes} not found under {base}: put torchvision's {folder}/ there, "
                f"or set dataset.download=true with internet access"
            )
        _download(root, num_classes)
    images, labels = [], []
    for f in files:
        with open(f, "rb") as fh:
            entry = pickle.load(fh, encoding="bytes")
        images.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[key])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


def _download(root: str, num_classes: int) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if num_classes == 10 else CIFAR100
    try:
        cls(root, train=True, download=True)
    except Exception as exc:
        raise DataError(f"CIFAR-{num_classes} download failed ({type(exc).__name__}): put the data under {root}") from exc


class CIFARDataModule(ImageDataModule):
    source_channels = 3

    def __init__(self, root: str | None = None, num_classes: int = 10, download: bool = False, **kwargs):
        if num_classes not in LAYOUT:
            raise ConfigError(f"dataset.num_classes must be 10 or 100 for CIFAR, got {num_classes}")
        self.num_classes = int(num_classes)
        super().__init__(num_classes=num_classes, **kwargs)
        self.root, self.download = root, bool(download)

    def prepare_data(self) -> None:
        load_cifar(self.root, self.num_classes, train=False, download=self.download)

    def load_arrays(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_cifar(self.root, self.num_classes, train, self.download)
