"""The image files of a data set on disk, found by one scan (find_files: ImageFolder trees and ADE20K's release
layout), read so that bad data names the file: a missing or empty class folder is a DataError naming the folder,
and an image that cannot be read or decoded is either a DataError naming the file (the default: the run stops) or,
with dataset.skip_corrupt=true, dropped from its batch with a warning naming it."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from semmae.errors import DataError


class CorruptImageWarning(UserWarning):
    """An image skipped because of dataset.skip_corrupt=true."""


def find_files(directory: str | Path, extensions: tuple[str, ...], recursive: bool = True) -> list[str]:
    """The files in directory (and, recursive, in its subfolders, following links) whose name ends in one of
    extensions (any case), in torchvision's ImageFolder order: folders sorted by path, then files by name."""
    directory = str(directory)
    if recursive:
        walk = sorted(os.walk(directory, followlinks=True))
    else:
        walk = [next(os.walk(directory), (directory, [], []))]
    ends = tuple(e.lower() for e in extensions)
    return [os.path.join(root, name) for root, _, names in walk for name in sorted(names)
            if name.lower().endswith(ends)]


class ScannedImageFolder(ImageFolder):
    """torchvision's ImageFolder (classes, loader) whose samples are find_files' list of each class folder (chosen by
    extension: is_valid_file is not supported; empty classes are allowed, image_folder names them)."""

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        if is_valid_file is not None:
            raise ValueError("ScannedImageFolder selects files by extension only")
        extensions = IMG_EXTENSIONS if extensions is None else extensions
        return [(path, class_to_idx[c]) for c in sorted(class_to_idx)
                for path in find_files(os.path.join(directory, c), extensions)]


def image_folder(root: Path) -> ImageFolder:
    """ImageFolder of root/<class>/<image>, with one-line errors for no or empty class folders."""
    try:
        folder = ScannedImageFolder(str(root), allow_empty=True)
    except FileNotFoundError:  # torchvision: "Couldn't find any class folder in ..."
        raise DataError(f"no class folders in {root} (expected {root}/<class>/<image>)") from None
    found = set(folder.targets)
    empty = [c for c in folder.classes if folder.class_to_idx[c] not in found]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(f"ImageFolder class folder has no images: {root / empty[0]}{more}; "
                        f"image files end in {', '.join(IMG_EXTENSIONS)}")
    return folder


def corrupt(path: str, reason: str, skip: bool) -> None:
    """An image that cannot be read: a DataError naming it, or with skip a warning naming it (the caller drops it)."""
    if not skip:
        raise DataError(f"cannot read image {path}: {reason} "
                        "(dataset.skip_corrupt=true skips such files with a warning)")
    warnings.warn(f"skipping corrupt image {path}: {reason}", CorruptImageWarning, stacklevel=2)


def read_bytes(path: str, skip: bool) -> torch.Tensor | None:
    """The file's bytes as uint8 [L] in ordinary memory (None: skipped). Not torchvision.io.read_file: its tensor is
    a file mapping whose descriptor is closed, which a DataLoader worker cannot send back (EBADF, and the main
    process then waits forever)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        corrupt(path, exc.strerror or str(exc), skip)
        return None
    if data.size == 0:
        corrupt(path, "empty file", skip)
        return None
    return torch.from_numpy(data)


def readable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items that are not {"corrupt": path} (images skipped by the dataset); a batch of only those is an error."""
    good = [it for it in items if "corrupt" not in it]
    if not good:
        raise DataError(f"every image of a batch is corrupt, e.g. {items[0]['corrupt']}: check the dataset")
    return good


def collate_readable(items: list[dict[str, Any]]) -> Any:
    """default_collate of the readable items (a batch one smaller for each skipped image)."""
    return default_collate(readable(items))
