"""Batched augmentation on whatever device the batch is on (the GPU-resident path, and the fast CPU path):
MAE's RandomResizedCrop + horizontal flip + normalise, drawn per image like torchvision's, applied to the
whole batch with one affine grid_sample. Also the deterministic evaluation resize + normalise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_crop_boxes(
    n: int,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """Integer crop boxes [n, 4] = (x0, y0, w, h) drawn as torchvision's RandomResizedCrop.get_params does:
    area fraction ~ U(scale), log aspect ~ U(log ratio), up to `attempts` tries, then a centre-crop fallback.
    height/width are one size for all images, or per-image sizes [n] (decoded photos of different sizes)."""
    height = torch.as_tensor(height, dtype=torch.float32, device=device).expand(n)
    width = torch.as_tensor(width, dtype=torch.float32, device=device).expand(n)
    area = (height * width)[:, None]
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    u = torch.rand(n, attempts, 2, generator=generator, device=device)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= width[:, None]) & (h <= height[:, None])
    first = torch.argmax(ok.to(torch.int8), dim=1)  # index of the first valid attempt
    any_ok = ok.any(dim=1)
    w = torch.gather(w, 1, first[:, None]).squeeze(1)
    h = torch.gather(h, 1, first[:, None]).squeeze(1)
    # Fallback: the whole image cropped to the ratio bounds, centred (torchvision's behaviour).
    in_ratio = width / height
    fw = torch.where(
        in_ratio < ratio[0], width, torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width)
    )
    fh = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    w = torch.where(any_ok, w, fw)
    h = torch.where(any_ok, h, fh)
    pos = torch.rand(n, 2, generator=generator, device=device)
    x0 = torch.where(any_ok, torch.floor(pos[:, 0] * (width - w + 1)), torch.div(width - fw, 2, rounding_mode="floor"))
    y0 = torch.where(
        any_ok, torch.floor(pos[:, 1] * (height - h + 1)), torch.div(height - fh, 2, rounding_mode="floor")
    )
    return torch.stack([x0, y0, w, h], dim=1)


def crop_resize(
    images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None, mode: str = "bilinear"
) -> torch.Tensor:
    """Crop boxes [B, 4] (x0, y0, w, h) out of float images [B, C, H, W] and resize each to size x size
    (pixel-centre aligned like torchvision's resize); flip [B] bool mirrors horizontally. mode="nearest" for
    label maps (segment ids, class masks), which must keep their integer values."""
    b, _, height, width = images.shape
    x0, y0, w, h = boxes.to(images.dtype).unbind(1)
    sx = w / width
    sy = h / height
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    theta = torch.zeros(b, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * x0 + w) / width - 1
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = (2 * y0 + h) / height - 1
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8-range float [0, 255] -> (x / 255 - mean) / std, per channel."""
    return (images / 255.0 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def expand_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1)
    raise ValueError(f"cannot turn {images.shape[1]}-channel images into {channels} channels")


class BatchTrainAugment:
    """uint8 [B, C, H, W] -> normalised float [B, channels, size, size] with MAE's pretraining augmentation."""

    def __init__(self, size, mean, std, channels, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5):
        self.size, self.channels, self.flip_p = int(size), int(channels), float(flip_p)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.mean, self.std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None, label_maps: torch.Tensor | None = None
    ):
        """-> augmented images; with label_maps [B, H, W] (integer maps aligned with the images) also the maps
        under the same crop and flip, resized with nearest neighbour: (images, maps)."""
        b, _, height, width = images.shape
        dev = images.device
        boxes = sample_crop_boxes(b, height, width, self.scale, self.ratio, generator, dev)
        flip = torch.rand(b, generator=generator, device=dev) < self.flip_p
        out = crop_resize(images.float(), boxes, self.size, flip)
        out = normalize(out, self.mean.to(dev), self.std.to(dev))
        out = expand_channels(out, self.channels).contiguous()
        if label_maps is None:
            return out
        maps = crop_resize(label_maps[:, None].float(), boxes, self.size, flip, mode="nearest")[:, 0]
        return out, maps.round().to(label_maps.dtype)


class BatchEvalTransform:
    """uint8 [B, C, H, W] -> normalised float [B, channels, size, size]: resize (if needed) and normalise."""

    def __init__(self, size, mean, std, channels):
        self.size, self.channels = int(size), int(channels)
        self.mean, self.std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None, label_maps: torch.Tensor | None = None
    ):
        """-> images; with label_maps [B, H, W] also the maps resized with nearest neighbour: (images, maps)."""
        out = images.float()
        resize = out.shape[-2:] != (self.size, self.size)
        if resize:
            out = F.interpolate(out, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        out = normalize(out, self.mean.to(out.device), self.std.to(out.device))
        out = expand_channels(out, self.channels).contiguous()
        if label_maps is None:
            return out
        maps = label_maps
        if resize:
            maps = F.interpolate(maps[:, None].float(), size=(self.size, self.size), mode="nearest")[:, 0]
        return out, maps.round().to(label_maps.dtype)
