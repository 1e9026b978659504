"""A ViT encoder turned into a semantic segmenter, as in MAE/BEiT's ADE20K setting: the patch tokens of four evenly
spaced blocks become a 4-level feature pyramid (x4 up, x2 up, identity, x2 down), a UperNet head predicts classes from
it, and an optional FCN head on one level adds an auxiliary loss. Whole-image and sliding-window inference."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Format
from torch import nn

from semmae.errors import ConfigError
from semmae.models.encoder import ViTEncoder
from semmae.models.upernet import FCNHead, UperNetHead, resize


def evenly_spaced_blocks(depth: int) -> list[int]:
    """Block numbers (1-based) at 1/3, 1/2, 2/3 and the end of the encoder: 4, 6, 8, 12 of 12; 2, 3, 4, 6 of 6."""
    return [max(1, round(depth * k / 6)) for k in (2, 3, 4, 6)]


def rescale_layer(dim: int, factor: float) -> nn.Module:
    """Resample a [B, dim, h, w] map by a power of two: stride-2 transposed convs up (BatchNorm + GELU between
    them), max-pooling down, identity at 1."""
    k = math.log2(factor) if factor > 0 else 0.5
    if k != int(k):
        raise ConfigError(f"pyramid rescale factor {factor} is not a power of two (use e.g. 4, 2, 1, 0.5)")
    k = int(k)
    if k == 0:
        return nn.Identity()
    if k < 0:
        return nn.MaxPool2d(kernel_size=2**-k, stride=2**-k)
    layers: list[nn.Module] = []
    for i in range(k):
        if i:
            layers += [nn.BatchNorm2d(dim), nn.GELU()]
        layers.append(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class Segmenter(nn.Module):
    """encoder -> features of `out_blocks` -> pyramid (`rescales`) -> UperNet (+ auxiliary FCN on `aux_level`)."""

    def __init__(
        self,
        encoder: ViTEncoder,
        num_classes: int,
        out_blocks: Sequence[int] | str = "auto",
        rescales: Sequence[float] = (4, 2, 1, 0.5),
        channels: int = 32,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux_channels: int | None = 16,
        aux_level: int = 2,
    ):
        super().__init__()
        depth = len(encoder.blocks)
        blocks = evenly_spaced_blocks(depth) if out_blocks == "auto" else [int(b) for b in out_blocks]
        if len(blocks) != len(rescales):
            raise ConfigError(f"out_blocks {blocks} and rescales {list(rescales)} must have the same length")
        if any(not 1 <= b <= depth for b in blocks) or sorted(blocks) != blocks:
            raise ConfigError(f"out_blocks {blocks} must be non-decreasing block numbers in 1..{depth} (1-based)")
        if aux_channels and not 0 <= aux_level < len(blocks):
            raise ConfigError(f"aux_level {aux_level} is not a pyramid level (0..{len(blocks) - 1})")
        self.encoder = encoder
        self.out_blocks = blocks
        self.num_classes = int(num_classes)
        dim = encoder.embed_dim
        self.neck = nn.ModuleList(rescale_layer(dim, float(r)) for r in rescales)
        self.decode_head = UperNetHead([dim] * len(blocks), num_classes, channels, pool_scales, dropout)
        self.aux_head = FCNHead(dim, num_classes, aux_channels, dropout) if aux_channels else None
        self.aux_level = int(aux_level)
        # The final norm and the blocks after the last tapped one are not on the path: freezing them keeps them out
        # of the optimiser and lets DDP run without find_unused_parameters.
        unused = [encoder.norm, *encoder.blocks[blocks[-1] :]]
        for module in unused:
            module.requires_grad_(False)
        # timm's dynamic_img_size, as its constructor sets it: any H, W divisible by the patch size, the position
        # embeddings resampled (bicubic) when the grid differs from the encoder's
        encoder.dynamic_img_size = True
        encoder.patch_embed.strict_img_size = False
        encoder.patch_embed.flatten = False
        encoder.patch_embed.output_fmt = Format.NHWC

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.encoder.patch_embed.patch_size)

    def block_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens after each of out_blocks as maps [B, D, H/p, W/p] (timm's forward_intermediates, which stops
        at the last tapped block and drops the num_prefix_tokens prefix tokens: CLS and any registers). Any H, W
        divisible by the patch size."""
        ph, pw = self.patch_size
        height, width = images.shape[-2:]
        if height % ph or width % pw:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {ph}x{pw}")
        taps = sorted(set(self.out_blocks))
        maps = self.encoder.forward_intermediates(
            images, indices=[b - 1 for b in taps], stop_early=True, intermediates_only=True
        )
        by_block = dict(zip(taps, maps))
        return [by_block[b] for b in self.out_blocks]  # a shallow encoder may feed one block to several levels

    def pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature pyramid, finest level first (for patch 16: strides 4, 8, 16, 32)."""
        return [layer(f) for layer, f in zip(self.neck, self.block_features(images))]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """-> {"out": logits at the finest level's resolution, "aux": auxiliary logits (None without the FCN head)}."""
        levels = self.pyramid(images)
        aux = self.aux_head(levels[self.aux_level]) if self.aux_head is not None and self.training else None
        return {"out": self.decode_head(levels), "aux": aux}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, K, H, W] at the input's resolution, for any input size: padded (zeros, bottom/right) to a
        multiple of the patch size, predicted, upsampled and cropped back."""
        height, width = images.shape[-2:]
        ph, pw = self.patch_size
        pad_h, pad_w = -height % ph, -width % pw
        padded = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
        logits = resize(self.forward(padded)["out"], padded.shape[-2:])
        return logits[..., :height, :width]

    # --- layer-wise lr decay (semmae.optim.layer_decay_groups reads these, as timm's models provide them) -----
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids for layer-wise lr decay (timm's convention): embeddings 0, block i -> i + 1; everything else
        (neck, heads) falls in the last group and keeps the full lr."""
        return dict(
            stem=r"^encoder\.(?:cls_token|reg_token|pos_embed|patch_embed|norm_pre)",
            blocks=[(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm", (99999,))],
        )

    def no_weight_decay(self) -> set[str]:
        """No weight decay on the encoder's CLS token and position embeddings (nor, by the rule, on 1-D parameters)."""
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}


def sliding_windows(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering [0, size): every `stride`, the last one flush with the end (mmseg's rule);
    one window at 0 when the window covers the size."""
    if size <= window:
        return [0]
    n = math.ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(n)]


def slide_inference(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    window: int | Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
) -> torch.Tensor:
    """Sliding-window logits [B, K, H, W]: `predict` maps a crop [B, C, h, w] to logits [B, K, h, w]; overlapping
    windows are averaged. A window that covers the image gives exactly predict(images)."""
    wh, ww = (window, window) if isinstance(window, int) else tuple(window)
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    b, _, height, width = images.shape
    total = images.new_zeros(b, num_classes, height, width)
    count = images.new_zeros(1, 1, height, width)
    for y in sliding_windows(height, wh, sh):
        for x in sliding_windows(width, ww, sw):
            crop = images[..., y : y + wh, x : x + ww]
            total[..., y : y + crop.shape[-2], x : x + crop.shape[-1]] += predict(crop)
            count[..., y : y + crop.shape[-2], x : x + crop.shape[-1]] += 1
    return total / count
