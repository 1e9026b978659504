"""CIFAR-10 / CIFAR-100 in torchvision's on-disk format (the python pickle batches and the meta file), read with
torchvision's CIFAR10 / CIFAR100 checking that the files are there, not their md5 sums, so that any copy in that
layout works; downloaded (and checked) with torchvision when missing and dataset.download=true."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.datasets import CIFAR10, CIFAR100

from semmae.data.in_memory import ImageDataModule
from semmae.errors import ConfigError, DataError

READERS = {10: CIFAR10, 100: CIFAR100}


def _any_copy(cls: type[CIFAR10]) -> type[CIFAR10]:
    """cls with no md5 sums: torchvision's integrity check (check_integrity with md5=None) then asks only that
    every file exists."""
    return type(
        cls.__name__,
        (cls,),
        {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


FILES_ONLY = {n: _any_copy(cls) for n, cls in READERS.items()}


def files(num_classes: int) -> list[str]:
    """The files torchvision reads, under its base_folder: the training and test batches and the meta file."""
    cls = READERS[num_classes]
    return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def load_cifar(root: str, num_classes: int, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """-> uint8 images [N, 3, 32, 32], int64 labels [N]."""
    if num_classes not in READERS:
        raise ConfigError(f"dataset.num_classes must be 10 or 100 for CIFAR, got {num_classes}")
    folder = READERS[num_classes].base_folder
    if root is None:
        raise ConfigError(f"CIFAR-{num_classes} needs dataset.root=DIR (the folder holding {folder}/)")
    root_p = Path(root).expanduser()
    base = root_p / folder
    if not all((base / f).is_file() for f in files(num_classes)):
        if not download:
            raise DataError(
                f"CIFAR-{num_classes} not found under {base}: put torchvision's {folder}/ there, "
                f"or set dataset.download=true with internet access"
            )
        _download(root, num_classes)
    data = FILES_ONLY[num_classes](str(root_p), train=train, download=False)
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()  # torchvision's HWC -> CHW
    return images, torch.tensor(data.targets, dtype=torch.long)


def _download(root: str, num_classes: int) -> None:
    try:
        READERS[num_classes](root, train=True, download=True)
    except Exception as exc:
        raise DataError(
            f"CIFAR-{num_classes} download failed ({type(exc).__name__}): put the data under {root}"
        ) from exc


class CIFARDataModule(ImageDataModule):
    source_channels = 3

    def __init__(self, root: str | None = None, num_classes: int = 10, download: bool = False, **kwargs):
        if num_classes not in READERS:
            raise ConfigError(f"dataset.num_classes must be 10 or 100 for CIFAR, got {num_classes}")
        self.num_classes = int(num_classes)
        super().__init__(num_classes=num_classes, **kwargs)
        self.root, self.download = root, bool(download)

    def prepare_data(self) -> None:
        load_cifar(self.root, self.num_classes, train=False, download=self.download)

    def load_arrays(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_cifar(self.root, self.num_classes, train, self.download)
