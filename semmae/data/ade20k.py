"""ADE20K (SceneParsing, 150 classes) in its release layout, ADEChallengeData2016/:
images/{training,validation}/*.jpg and annotations/{training,validation}/*.png (same stems).

Annotations hold 0 = "other" and 1..150 = the classes; 0 is ignored (-> 255) and the rest shifted down by one, so
labels are 0..149 (mmseg's reduce_zero_label). Training (mmseg's ADE20K pipeline): random rescale to
(2048, 512) x r, r ~ U(0.5, 2.0), keeping the aspect ratio; a random crop_size crop in which no class covers more
than 75% of the pixels (up to 10 tries); horizontal flip; photometric distortion; normalise; pad to the crop size
(image 0, labels 255). Validation: rescale to fit (2048, 512) keeping the aspect ratio, labels at full resolution
(one image per batch: sizes differ). Decoded and augmented per image in DataLoader workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from semmae.data.disk_images import find_files
from semmae.data.interface import SemmaeDataModule
from semmae.errors import ConfigError, DataError

IGNORE_INDEX = 255
SPLITS = {"train": "training", "val": "validation"}
CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)


def reduce_zero_label(annotation: torch.Tensor) -> torch.Tensor:
    """uint8 annotation (0 = other, 1..150) -> int64 labels 0..149 with 0 (and 255) -> 255."""
    a = annotation.long()
    return torch.where((a == 0) | (a == IGNORE_INDEX), IGNORE_INDEX, a - 1)


def fit_scale(height: int, width: int, scale: tuple[int, int]) -> float:
    """Factor that fits (h, w) inside scale = (long, short) edges, keeping the aspect ratio (mmseg's keep_ratio)."""
    long_edge, short_edge = max(scale), min(scale)
    return min(long_edge / max(height, width), short_edge / min(height, width))


def rescale(image: torch.Tensor, label: torch.Tensor | None, factor: float):
    """Bilinear (antialiased) image, nearest-neighbour labels."""
    size = [max(1, int(round(image.shape[-2] * factor))), max(1, int(round(image.shape[-1] * factor)))]
    image = TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    if label is not None:
        label = TF.resize(label[None], size, interpolation=TF.InterpolationMode.NEAREST)[0]
    return image, label


def random_crop(label: torch.Tensor, size: int, cat_max_ratio: float, tries: int = 10) -> tuple[int, int]:
    """Top-left corner of a size x size crop (clipped to the image) in which no single class covers more than
    cat_max_ratio of the labelled pixels; after `tries` failures, the last crop drawn."""
    height, width = label.shape
    for _ in range(tries):
        y = int(torch.randint(0, max(height - size, 0) + 1, ()))
        x = int(torch.randint(0, max(width - size, 0) + 1, ()))
        if cat_max_ratio >= 1.0:
            break
        crop = label[y : y + size, x : x + size]
        counts = torch.bincount(crop[crop != IGNORE_INDEX].flatten())
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return y, x


def photometric_distortion(image: torch.Tensor) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on a uint8 RGB image [3, H, W], each step with probability 0.5: brightness
    +-32, contrast x U(0.5, 1.5) (before or after the colour steps, at random), saturation x U(0.5, 1.5), hue
    +-18 degrees. -> float in [0, 1]."""

    def coin() -> bool:
        return bool(torch.rand(()) < 0.5)

    def uniform(lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * torch.rand(()))

    x = image.float() / 255.0
    if coin():
        x = (x + uniform(-32, 32) / 255.0).clamp(0, 1)
    contrast_first = coin()
    if contrast_first and coin():
        x = TF.adjust_contrast(x, uniform(0.5, 1.5))
    if coin():
        x = TF.adjust_saturation(x, uniform(0.5, 1.5))
    if coin():
        x = TF.adjust_hue(x, uniform(-18, 18) / 360.0)
    if not contrast_first and coin():
        x = TF.adjust_contrast(x, uniform(0.5, 1.5))
    return x


def list_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) paths of a split, sorted by stem; every image needs its annotation."""
    image_dir, ann_dir = root / "images" / SPLITS[split], root / "annotations" / SPLITS[split]
    for d in (image_dir, ann_dir):
        if not d.is_dir():
            raise DataError(
                f"ADE20K folder not found: {d} (dataset.root must be the ADEChallengeData2016 folder, "
                "with images/{training,validation} and annotations/{training,validation})"
            )
    images = [Path(p) for p in find_files(image_dir, (".jpg",), recursive=False)]
    if not images:
        raise DataError(f"no .jpg images in {image_dir}")
    missing = [p.name for p in images if not (ann_dir / f"{p.stem}.png").is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} ADE20K images in {image_dir} have no annotation in {ann_dir} "
            f"(first: {missing[0]}): the release is incomplete"
        )
    return [(p, ann_dir / f"{p.stem}.png") for p in images]


class ADE20KDataset(Dataset):
    """{"image": float [3, H, W] normalised, "mask": int64 [H, W] (0..149, 255 = ignore), "index": i}."""

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        train: bool,
        crop_size: int = 512,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    ):
        self.pairs, self.train = pairs, bool(train)
        self.crop_size, self.scale = int(crop_size), tuple(int(s) for s in scale)
        self.ratio_range, self.cat_max_ratio = tuple(float(r) for r in ratio_range), float(cat_max_ratio)
        self.mean, self.std = list(mean), list(std)

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, ann_path = self.pairs[i]
        image = decode_image(read_file(str(image_path)), mode=ImageReadMode.RGB)
        annotation = decode_image(read_file(str(ann_path)), mode=ImageReadMode.UNCHANGED)
        if annotation.shape[0] != 1 or annotation.shape[-2:] != image.shape[-2:]:
            raise DataError(
                f"{ann_path}: expected a one-channel label map of the image's size "
                f"{tuple(image.shape[-2:])}, got {tuple(annotation.shape)}"
            )
        return image, reduce_zero_label(annotation[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, label = self.read(i)
        if not self.train:
            image, _ = rescale(image, None, fit_scale(*image.shape[-2:], self.scale))
            return {"image": TF.normalize(image.float() / 255.0, self.mean, self.std), "mask": label, "index": i}
        lo, hi = self.ratio_range
        ratio = lo + (hi - lo) * float(torch.rand(()))
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        image, label = rescale(image, label, fit_scale(*image.shape[-2:], scale))
        y, x = random_crop(label, self.crop_size, self.cat_max_ratio)
        image = image[:, y : y + self.crop_size, x : x + self.crop_size]
        label = label[y : y + self.crop_size, x : x + self.crop_size]
        if torch.rand(()) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        image = TF.normalize(photometric_distortion(image), self.mean, self.std)
        pad_h, pad_w = self.crop_size - image.shape[-2], self.crop_size - image.shape[-1]
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        return {"image": image, "mask": label, "index": i}


class ADE20KDataModule(SemmaeDataModule):
    """loader: SemmaeDataModule's settings, batch_size (16 by default), num_workers, pin_memory, train_subset,
    val_subset, seed, loader_timeout_s, and mean / std (ImageNet's, timm's constants, by default). Validation batches
    hold one image (sizes differ)."""

    num_classes = len(CLASSES)
    classes = CLASSES
    ignore_index = IGNORE_INDEX
    channels = 3

    def __init__(
        self,
        root: str | None = None,
        crop_size: int = 512,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        num_classes: int | None = None,
        channels: int = 3,
        name: str = "ade20k",
        **loader: Any,
    ):
        if root is None:
            raise ConfigError("ADE20K needs dataset.root=DIR, the ADEChallengeData2016 folder (or set ADE20K_ROOT)")
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ConfigError(f"dataset.num_classes={num_classes}, but ADE20K has {self.num_classes} classes")
        if int(channels) != 3:
            raise ConfigError("ADE20K images are decoded as RGB: dataset.channels must be 3")
        if "eval_batch_size" in loader:
            raise ConfigError("ADE20K validates one image per batch (sizes differ): drop dataset.eval_batch_size")
        loader.setdefault("batch_size", 16)
        loader.setdefault("mean", IMAGENET_DEFAULT_MEAN)
        loader.setdefault("std", IMAGENET_DEFAULT_STD)
        super().__init__(name=name, eval_batch_size=1, **loader)
        self.root = Path(root).expanduser()
        self.options = dict(
            crop_size=int(crop_size),
            scale=tuple(scale),
            ratio_range=tuple(ratio_range),
            cat_max_ratio=float(cat_max_ratio),
            mean=self.mean,
            std=self.std,
        )
        self.datasets: dict[str, ADE20KDataset] = {}

    def prepare_data(self) -> None:
        for split in SPLITS:
            list_pairs(self.root, split)  # fails early, naming the missing folder or annotation

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split in self.datasets:
                continue
            pairs = list_pairs(self.root, split)
            indices = self.subset(len(pairs), split)
            if indices is not None:
                pairs = [pairs[i] for i in indices]
            self.datasets[split] = ADE20KDataset(pairs, train=split == "train", **self.options)

    def split_size(self, split: str) -> int:
        self.setup()
        return len(self.datasets[split])

    def split_dataset(self, split: str, train: bool) -> Dataset:
        ds = self.datasets[split]
        return ds if ds.train == train else ADE20KDataset(ds.pairs, train=train, **self.options)
