"""Fashion-MNIST (the embedded default): IDX files from dataset.root, else the Debian package
dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), else torchvision's downloader.
28x28 grayscale images are padded to a 32x32 canvas (background is black) for patch size 4.

dataset.segments=foreground adds a segment map per image, batch["segments"] (for masking.segmenter=given): pixels
brighter than FOREGROUND_THRESHOLD are garment, the rest background, and each of the two is split into its
4-connected components, every component one segment id. The photographs were cut out onto black (half the pixels
are exactly 0), so a low threshold finds the silhouette; 16 (of 255) leaves ~1.1 garment and ~4 background
components per image (the background splits between legs, sleeves and straps)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semmae.data.idx import read_idx
from semmae.data.in_memory import ImageDataModule
from semmae.errors import ConfigError, DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FOREGROUND_THRESHOLD = 16
SEGMENTS = ("foreground",)
HOW_TO_GET = (
    "install the Debian package (apt-get install dataset-fashion-mnist), or set dataset.root=DIR "
    "to a folder with the four IDX files, or allow dataset.download=true with internet access"
)
SUBDIRS = ("", "FashionMNIST/raw", "raw")  # where under a folder the IDX files are looked for


def _find(directory: Path, stem: str) -> Path | None:
    for sub in SUBDIRS:
        for name in (stem + ".gz", stem):
            p = directory / sub / name
            if p.is_file():
                return p
    return None


def locate(root: str | None, download: bool) -> Path:
    """The directory holding the four IDX files, in order: root, the Debian package, a torchvision download (into
    root when it is given and exists: a root that does not exist is an error, nothing is created)."""
    stems = [s for pair in FILES.values() for s in pair]
    if root is not None:
        root_p = Path(root).expanduser()
        if all(_find(root_p, s) for s in stems):
            return root_p
        looked = ", ".join(str(root_p / sub) for sub in SUBDIRS)
        if not root_p.is_dir():
            raise DataError(
                f"Fashion-MNIST not found: dataset.root={root} is not a folder (looked in {looked}): "
                f"create it to download into it, or {HOW_TO_GET}"
            )
        if not download:
            raise DataError(
                f"Fashion-MNIST IDX files not found under dataset.root={root} (looked in {looked}): {HOW_TO_GET}"
            )
        return _download(root_p)
    if all(_find(DEBIAN_DIR, s) for s in stems):
        return DEBIAN_DIR
    if not download:
        raise DataError(f"Fashion-MNIST not found: {HOW_TO_GET}")
    return _download(Path.home() / ".cache" / "semmae" / "fashion-mnist")


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of path that does not exist yet (what a download would create), or None."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            return missing
        missing = p
    return missing


def _download(target: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    created = _first_missing(target / "FashionMNIST")
    try:
        FashionMNIST(str(target), train=True, download=True)
        FashionMNIST(str(target), train=False, download=True)
    except Exception as exc:  # offline, DNS, HTTP errors: all mean "could not get the data"
        if created is not None:  # leave no empty or half-downloaded folders behind
            shutil.rmtree(created, ignore_errors=True)
        raise DataError(
            f"Fashion-MNIST not found and the download failed ({type(exc).__name__}): {HOW_TO_GET}"
        ) from exc
    return target


def load_fashion_mnist(root: str | None, train: bool, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """-> uint8 images [N, 1, 28, 28], int64 labels [N]."""
    directory = locate(root, download)
    img_stem, lbl_stem = FILES[train]
    images = torch.from_numpy(read_idx(_find(directory, img_stem)).copy())
    labels = torch.from_numpy(read_idx(_find(directory, lbl_stem)).astype("int64"))
    if images.ndim != 3 or len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST files in {directory} are inconsistent: {tuple(images.shape)} vs {len(labels)} labels"
        )
    return images.unsqueeze(1), labels


def foreground_segments(images: torch.Tensor, threshold: int = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """uint8 [N, 1, H, W] -> int16 [N, H, W] segment ids: the 4-connected components of the garment (pixels >
    threshold; ids 1, 2, ...) and of the background (ids 1001, 1002, ...), numbered within each image."""
    from scipy import ndimage

    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)  # 4-connectivity inside an image, none across images
    fg = (images[:, 0] > threshold).numpy()
    out = np.zeros(fg.shape, dtype=np.int16)
    for part, base in ((fg, 0), (~fg, 1000)):
        labels, _ = ndimage.label(part, structure=plane)  # numbered in scan order, image after image
        flat = labels.reshape(len(labels), -1)
        first = np.where(flat > 0, flat, np.iinfo(np.int32).max).min(axis=1)  # each image's smallest id
        local = np.where(flat > 0, flat - first[:, None] + 1 + base, 0).reshape(labels.shape)
        out = np.where(part, local, out).astype(np.int16)
    return torch.from_numpy(out)


class FashionMNISTDataModule(ImageDataModule):
    num_classes = 10
    source_channels = 1
    classes = CLASSES

    def __init__(
        self, root: str | None = None, download: bool = True, canvas: int = 32, segments: str | None = None, **kwargs
    ):
        kwargs.setdefault("mean", (0.2860,))
        kwargs.setdefault("std", (0.3530,))
        super().__init__(**kwargs)
        self.root, self.download, self.canvas = root, bool(download), int(canvas)
        if segments is not None and segments not in SEGMENTS:
            raise ConfigError(f"dataset.segments must be null or one of {', '.join(SEGMENTS)}, got {segments!r}")
        self.segments = segments
        self._read: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}  # prepare_data's arrays, until setup

    def map_keys(self) -> tuple[str, ...]:
        return ("segments",) if self.segments else ()

    def load_maps(self, images: torch.Tensor, train: bool) -> dict[str, torch.Tensor]:
        return {"segments": foreground_segments(images)} if self.segments == "foreground" else {}

    def how_to_provide(self, key: str) -> str:
        if key == "segments":
            return "set dataset.segments=foreground (garment and background components as segments)"
        return super().how_to_provide(key)

    def prepare_data(self) -> None:
        """Find and read the IDX files now, so that missing or broken data fails (with the fix) before training
        starts; setup takes the arrays from here instead of reading them again."""
        if self.data:
            return
        for train in (True, False):
            if train not in self._read:
                self._read[train] = load_fashion_mnist(self.root, train, self.download)

    def load_arrays(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self._read.pop(train, None) or load_fashion_mnist(self.root, train, self.download)
        pad = self.canvas - images.shape[-1]
        if pad > 0:  # centre the 28x28 garment on a black canvas
            images = F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        return images.contiguous(), labels
