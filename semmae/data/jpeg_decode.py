"""ImageFolder data that keeps a GPU fed: DataLoader workers only read the JPEG bytes; the batch is decoded on the
training device (nvJPEG through torchvision.io.decode_jpeg on CUDA, libjpeg on CPU) and cropped, resized
(antialiased), flipped and normalised there. Crop boxes are drawn on the CPU for the whole batch at once, so the
device never waits on the host for them. A batch that fails to decode is decoded image by image to name the bad
file (semmae.data.disk_images: stop, or skip it with dataset.skip_corrupt=true)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_jpeg

from semmae.data import disk_images
from semmae.data.augment import normalize, sample_crop_boxes
from semmae.errors import DataError


class EncodedImageFolder(Dataset):
    """root/<class>/<image>.jpg -> {"jpeg": raw bytes (uint8 [L]), "label", "index", "path"}; no decoding in the
    worker. An unreadable file is {"corrupt": path} with skip_corrupt (collate_encoded drops it), else a DataError."""

    def __init__(self, root: str | Path | ImageFolder, indices: list[int] | None = None, skip_corrupt: bool = False):
        folder = root if isinstance(root, ImageFolder) else disk_images.image_folder(Path(root))
        self.classes, self.samples = folder.classes, folder.samples
        self.indices, self.skip_corrupt = indices, skip_corrupt

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.samples)

    def item_path(self, i: int) -> str:
        """The file item i reads (a loader names it when its worker never answers)."""
        return self.samples[self.indices[i] if self.indices is not None else i][0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[self.indices[i] if self.indices is not None else i]
        data = disk_images.read_bytes(path, self.skip_corrupt)
        if data is None:
            return {"corrupt": path}
        return {"jpeg": data, "label": label, "index": i, "path": path}


def collate_encoded(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Variable-length byte strings and paths stay lists; labels and indices become tensors."""
    items = disk_images.readable(items)
    return {
        "jpeg": [it["jpeg"] for it in items],
        "path": [it["path"] for it in items],
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


def decode(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """-> RGB uint8 [3, H, W] images on `device` (the byte tensors stay on the CPU, as decode_jpeg requires)."""
    return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)


def _reason(exc: RuntimeError) -> str:
    """torchvision's "decode_jpeg, <source file>:<line>, <what>" -> what."""
    what = str(exc).strip().splitlines()[0].rsplit(", ", 1)[-1] if str(exc).strip() else type(exc).__name__
    if "Not a JPEG" in what:
        what += "; dataset.decode=device reads JPEG files only, dataset.decode=workers reads any image"
    return what


def decode_checked(
    jpegs: list[torch.Tensor], paths: list[str], device: torch.device, skip_corrupt: bool = False
) -> tuple[list[torch.Tensor], list[int]]:
    """decode(), and when the batch fails, each image alone to name the bad file -> (images, their positions)."""
    try:
        return decode(jpegs, device), list(range(len(jpegs)))
    except RuntimeError:
        pass
    images, keep = [], []
    for i, (jpeg, path) in enumerate(zip(jpegs, paths)):
        try:
            images.append(decode([jpeg], device)[0])
        except RuntimeError as exc:
            disk_images.corrupt(path, _reason(exc), skip_corrupt)
            continue
        keep.append(i)
    if not images:
        raise DataError(f"every image of a batch is corrupt, e.g. {paths[0]}: check the dataset")
    return images, keep


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def train_views(
    images: list[torch.Tensor],
    size: int,
    scale,
    ratio=(3 / 4, 4 / 3),
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RandomResizedCrop + horizontal flip of each decoded image -> float [B, 3, size, size] in [0, 255]."""
    heights = torch.tensor([img.shape[-2] for img in images])
    widths = torch.tensor([img.shape[-1] for img in images])
    boxes = sample_crop_boxes(len(images), heights, widths, scale, ratio, generator).long().tolist()
    flips = (torch.rand(len(images), generator=generator) < flip_p).tolist()
    out = []
    for img, (x0, y0, w, h), flip in zip(images, boxes, flips):
        crop = _resize(img[:, y0 : y0 + h, x0 : x0 + w], (size, size))
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def eval_views(images: list[torch.Tensor], size: int, crop_fraction: float = 0.875) -> torch.Tensor:
    """Resize the shorter side to size / crop_fraction, centre-crop size x size -> float [B, 3, size, size]."""
    short = int(round(size / crop_fraction))
    out = []
    for img in images:
        h, w = img.shape[-2:]
        nh, nw = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
        resized = _resize(img, (nh, nw))
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))  # as torchvision CenterCrop
        out.append(resized[:, top : top + size, left : left + size])
    return torch.stack(out)


def device_batch(
    batch: dict[str, Any],
    device: torch.device,
    size: int,
    train: bool,
    mean,
    std,
    scale,
    generator: torch.Generator | None = None,
    skip_corrupt: bool = False,
) -> dict[str, Any]:
    """Decode and transform an encoded batch on `device`: training batches get "image" (augmented) and
    "image_plain" (evaluation view), evaluation batches get "image"."""
    decoded, keep = decode_checked(batch["jpeg"], batch["path"], device, skip_corrupt)
    mean_t = torch.tensor(mean, device=device)
    std_t = torch.tensor(std, device=device)
    out = {k: v for k, v in batch.items() if k not in ("jpeg", "path")}
    if len(keep) < len(batch["jpeg"]):  # skipped images leave the batch with their labels and indices
        rows = torch.tensor(keep, device=device)
        out = {k: v[rows] for k, v in out.items()}
    plain = normalize(eval_views(decoded, size), mean_t, std_t)
    if train:
        out["image"] = normalize(train_views(decoded, size, scale, generator=generator), mean_t, std_t)
        out["image_plain"] = plain
    else:
        out["image"] = plain
    return out
