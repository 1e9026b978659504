"""The image files of a data set on disk, found by one scan (find_files: ImageFolder trees and ADE20K's release
layout), read so that bad data names the file: a missing or empty class folder is a DataError naming the folder,
and an image that cannot be read or decoded is either a DataError naming the file (the default: the run stops) or,
with dataset.skip_corrupt=true, dropped from its batch with a warning naming it."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from semmae.errors import DataError


class CorruptImageWarning(UserWarning):
    """An image skipped because of dataset.skip_corrupt=true."""


def walk_within(directory: str) -> list[tuple[str, list[str]]]:
    """(folder, file names) of directory and its subfolders, following links to folders, but never into a folder
    seen before (a link loop such as a/up -> ..) nor out of directory's own tree (a link to a sibling class would
    label its images with this class)."""
    top = os.path.realpath(directory)
    seen: set[str] = set()
    out = []
    stack = [directory]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen or not (real == top or real.startswith(top + os.sep)):
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        out.append((folder, [e.name for e in entries if not e.is_dir()]))
        stack.extend(e.path for e in reversed(entries) if e.is_dir())
    return sorted(out)


def find_files(directory: str | Path, extensions: tuple[str, ...], recursive: bool = True) -> list[str]:
    """The files in directory (and, recursive, in its subfolders, following links within it: walk_within) whose
    name ends in one of extensions (any case), in torchvision's ImageFolder order: folders sorted by path, then
    files by name."""
    directory = str(directory)
    if recursive:
        walk = walk_within(directory)
    else:
        walk = [(root, names) for root, _, names in [next(os.walk(directory), (directory, [], []))]]
    ends = tuple(e.lower() for e in extensions)
    return [os.path.join(root, name) for root, names in walk for name in sorted(names) if name.lower().endswith(ends)]


HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's 16- and 32-bit integer grey images


def open_rgb(path: str) -> Image.Image:
    """An image file as 8-bit RGB. PIL's convert("RGB") clips 16-bit grey (e.g. 16-bit PNG) to near-white, so those are
    scaled from 0..65535 to 0..255 first; palette images go through RGBA (their transparency is dropped with the
    alpha channel, as for RGBA and LA images); 32-bit images beyond the 16-bit range and float images have no range
    to scale by and are refused. Only regular files are opened: a FIFO or device would block the reading worker."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(f"not a regular file ({stat.filemode(os.stat(path).st_mode)})")
    with open(path, "rb") as fh:
        img = Image.open(fh)
        img.load()
    if img.mode in HIGH_BIT_MODES:
        values = np.asarray(img, dtype=np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise OSError(f"a {img.mode} image with values {values.min()}..{values.max()}, outside 16-bit grey")
        img = Image.fromarray(np.round(values / 257.0).astype(np.uint8), mode="L")
    elif img.mode == "F":
        raise OSError("a floating-point image, whose range cannot be told: convert it to 8- or 16-bit")
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("RGB")


class ScannedImageFolder(ImageFolder):
    """torchvision's ImageFolder (classes, loader) whose samples are find_files' list of each class folder (chosen by
    extension: is_valid_file is not supported; empty classes are allowed, image_folder names them)."""

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        if is_valid_file is not None:
            raise ValueError("ScannedImageFolder selects files by extension only")
        extensions = IMG_EXTENSIONS if extensions is None else extensions
        return [
            (path, class_to_idx[c])
            for c in sorted(class_to_idx)
            for path in find_files(os.path.join(directory, c), extensions)
        ]


def image_folder(root: Path) -> ImageFolder:
    """ImageFolder of root/<class>/<image>, with one-line errors for no or empty class folders."""
    try:
        folder = ScannedImageFolder(str(root), loader=open_rgb, allow_empty=True)
    except FileNotFoundError:  # torchvision: "Couldn't find any class folder in ..."
        raise DataError(f"no class folders in {root} (expected {root}/<class>/<image>)") from None
    found = set(folder.targets)
    empty = [c for c in folder.classes if folder.class_to_idx[c] not in found]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"ImageFolder class folder has no images: {root / empty[0]}{more}; "
            f"image files end in {', '.join(IMG_EXTENSIONS)}"
        )
    return folder


def corrupt(path: str, reason: str, skip: bool) -> None:
    """An image that cannot be read: a DataError naming it, or with skip a warning naming it (the caller drops it)."""
    if not skip:
        raise DataError(
            f"cannot read image {path}: {reason} (dataset.skip_corrupt=true skips such files with a warning)"
        )
    warnings.warn(f"skipping corrupt image {path}: {reason}", CorruptImageWarning, stacklevel=2)


def read_bytes(path: str, skip: bool) -> torch.Tensor | None:
    """The file's bytes as uint8 [L] in ordinary memory (None: skipped). Not torchvision.io.read_file: its tensor is
    a file mapping whose descriptor is closed, which a DataLoader worker cannot send back (EBADF, and the main
    process then waits forever)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError(f"not a regular file ({stat.filemode(os.stat(path).st_mode)})")
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
