"""Measuring attention artifacts of an encoder over a stream of image batches: per-block metrics
(docs/artifacts.md#metrics), the model-level shallow_* means, and the per-image maps the figures show.

Block indices in every name and key are 1-based (block 1 is the first block after the patch embedding) and
zero-padded to two digits: `attn/block_03/sink_ratio` is the third block's sink ratio."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from semmae.analysis import metrics as M
from semmae.analysis.capture import Capture, capture
from semmae.errors import ConfigError
from semmae.masking.regions import patch_pixel_std


@dataclass(frozen=True)
class ArtifactSettings:
    """tau: r' threshold of artifact_fraction; k: MAD multiplier of high_norm_fraction; flat_fraction: share of
    patches that count as flat in flat_patch_share; shallow_blocks: see metrics.shallow_blocks."""

    tau: float = 4.0
    k: float = 5.0
    flat_fraction: float = 0.25
    shallow_blocks: int | tuple[int, ...] | None = None

    def __post_init__(self):
        if not self.tau > 0:
            raise ConfigError(f"tau={self.tau}: the artifact threshold must be > 0 (default 4)")
        if not self.k >= 0:
            raise ConfigError(f"k={self.k}: the MAD multiplier must be >= 0 (default 5)")
        if not 0 < self.flat_fraction <= 1:
            raise ConfigError(f"flat_fraction={self.flat_fraction}: must be in (0, 1] (default 0.25)")
        if self.shallow_blocks is not None and not isinstance(self.shallow_blocks, int):
            object.__setattr__(self, "shallow_blocks", tuple(int(i) for i in self.shallow_blocks))


def block_key(index: int, depth: int) -> str:
    """1-based block index -> 'block_03' (zero-padded to two digits, more for deeper encoders)."""
    return f"block_{index:0{max(2, len(str(depth)))}d}"


@dataclass
class ArtifactMeasurement:
    blocks: list[dict[str, float]]  # blocks[i] = metrics of block i + 1
    shallow: dict[str, float]  # "shallow_<metric>": mean over the shallow blocks
    shallow_blocks: list[int]  # 1-based
    sink_modes: list[tuple[int, int]]  # per block: (row, col) of the most common most-attended patch
    num_images: int
    grid_size: tuple[int, int]
    settings: ArtifactSettings
    images: torch.Tensor | None = field(default=None, repr=False)  # [n, C, H, W] the first n images (model input)
    received: torch.Tensor | None = field(default=None, repr=False)  # [n, L, P] r' per image and block
    cls: torch.Tensor | None = field(default=None, repr=False)  # [n, L, P] CLS -> patch attention, fair share 1

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def scalars(self, prefix: str = "attn") -> dict[str, float]:
        """Flat metric keys: '<prefix>/block_03/sink_ratio' per block, '<prefix>/shallow_sink_ratio' per model."""
        out = {
            f"{prefix}/{block_key(i + 1, self.depth)}/{name}": value
            for i, block in enumerate(self.blocks)
            for name, value in block.items()
        }
        out.update({f"{prefix}/{name}": value for name, value in self.shallow.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_images": self.num_images,
            "grid_size": list(self.grid_size),
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.settings).items()},
            "shallow_blocks": self.shallow_blocks,
            "shallow": self.shallow,
            "blocks": [
                {"block": i + 1, **block, "sink_mode_row_col": list(self.sink_modes[i])}
                for i, block in enumerate(self.blocks)
            ],
        }


def batch_images(batch: Any) -> torch.Tensor | None:
    """The image tensor [B, C, H, W] of a batch: batch["image"] for dict batches (semmae's datamodules), else the
    first element of a tuple/list batch, else the batch itself; None if there is none."""
    if isinstance(batch, dict):
        images = batch.get("image")
    elif isinstance(batch, (tuple, list)) and batch:
        images = batch[0]
    else:
        images = batch
    return images if torch.is_tensor(images) and images.ndim == 4 else None


def shallow_means(blocks: list[dict[str, float]], spec, names) -> tuple[list[int], dict[str, float]]:
    """(1-based shallow blocks, {"shallow_<name>": mean over them}) for per-block values (None values skipped)."""
    idx = M.shallow_blocks(len(blocks), list(spec) if isinstance(spec, tuple) else spec)
    out = {}
    for name in names:
        values = [blocks[i - 1][name] for i in idx if blocks[i - 1].get(name) is not None]
        out[f"shallow_{name}"] = sum(values) / len(values) if values else None
    return idx, out


class ArtifactAccumulator:
    """The per-image metrics of every block over a stream of captures, of the full view or of the pretraining view
    (a capture with ids_keep: the patch metrics run over the visible patches, the sink positions are mapped back
    to the patch grid, the flattest patches are chosen among the visible ones)."""

    def __init__(self, settings: ArtifactSettings, grid: tuple[int, int], keep_images: int = 0):
        self.settings, self.grid, self.keep_images = settings, grid, keep_images
        self.per_block: list[dict[str, list[torch.Tensor]]] | None = None
        self.kept: dict[str, list[torch.Tensor]] = {"images": [], "received": [], "cls": []}
        self.n_kept = self.n_images = 0

    def update(self, cap: Capture, images: torch.Tensor) -> None:
        settings, grid = self.settings, self.grid
        prefix = cap.num_prefix_tokens
        visible = grid[0] * grid[1] if cap.ids_keep is None else cap.ids_keep.shape[1]
        tokens_seen = cap.attn[0].shape[-1] if cap.attn else 0
        if tokens_seen != prefix + visible:
            raise ConfigError(
                f"{tokens_seen} attention tokens, but num_prefix_tokens={prefix} + {visible} patches "
                f"({grid[0]}x{grid[1]} grid): the prefix (CLS + registers) does not match the encoder's token layout"
            )
        if self.per_block is None:
            self.per_block = [{name: [] for name in (*M.METRICS, "position")} for _ in cap.attn]
        pixel_std = patch_pixel_std(images, grid)
        if cap.ids_keep is not None:
            pixel_std = pixel_std.gather(1, cap.ids_keep)
        flat_w = M.flat_patch_weights(pixel_std, settings.flat_fraction)
        keep = self.n_kept < self.keep_images and cap.ids_keep is None
        received, cls = [], []
        for stats, attn, tokens in zip(self.per_block, cap.attn, cap.tokens):
            r = M.received_attention(attn, prefix)
            stats["sink_ratio"].append(M.sink_ratio(r).cpu())
            stats["artifact_fraction"].append(M.artifact_fraction(r, settings.tau).cpu())
            stats["attention_entropy"].append(M.attention_entropy(attn).cpu())
            stats["high_norm_fraction"].append(M.high_norm_fraction(tokens, prefix, settings.k).cpu())
            stats["flat_patch_share"].append(M.flat_patch_share(r, flat_w).cpu())
            stats["prefix_share"].append(M.prefix_share(attn, prefix).cpu())
            stats["norm_ratio"].append(M.norm_ratio(tokens, prefix).cpu())
            position = M.sink_positions(r)
            if cap.ids_keep is not None:
                position = cap.ids_keep.gather(1, position[:, None]).squeeze(1)
            stats["position"].append(position.cpu())
            if keep:
                received.append(r.cpu())
                cls.append(M.cls_attention(attn, prefix).cpu())
        if keep:
            take = min(self.keep_images - self.n_kept, images.shape[0])
            self.kept["images"].append(images[:take].detach().float().cpu())
            self.kept["received"].append(torch.stack(received, dim=1)[:take])
            self.kept["cls"].append(torch.stack(cls, dim=1)[:take])
            self.n_kept += take
        self.n_images += images.shape[0]

    def result(self) -> ArtifactMeasurement:
        if self.per_block is None or self.n_images == 0:
            raise ConfigError("no images to analyse: the image source is empty (check the dataset and num_images)")
        grid = self.grid
        num_patches = grid[0] * grid[1]
        blocks, modes = [], []
        for stats in self.per_block:
            values = {
                name: float(torch.cat(stats[name]).mean()) for name in M.METRICS if name != "sink_position_consistency"
            }
            consistency, mode = M.sink_position_consistency(torch.cat(stats["position"]), num_patches)
            values["sink_position_consistency"] = consistency
            blocks.append({name: values[name] for name in M.METRICS})
            modes.append(divmod(mode, grid[1]))
        shallow_idx, shallow = shallow_means(blocks, self.settings.shallow_blocks, M.METRICS)
        kept = self.kept
        return ArtifactMeasurement(
            blocks=blocks,
            shallow=shallow,
            shallow_blocks=shallow_idx,
            sink_modes=modes,
            num_images=self.n_images,
            grid_size=grid,
            settings=self.settings,
            images=torch.cat(kept["images"]) if kept["images"] else None,
            received=torch.cat(kept["received"]) if kept["received"] else None,
            cls=torch.cat(kept["cls"]) if kept["cls"] else None,
        )


def patch_grid(encoder: nn.Module) -> tuple[int, int]:
    """(rows, columns) of the encoder's patch grid."""
    return tuple(int(g) for g in encoder.patch_embed.grid_size)


def measure(
    encoder: nn.Module,
    batches: Iterable[torch.Tensor],
    settings: ArtifactSettings = ArtifactSettings(),
    keep_images: int = 0,
) -> ArtifactMeasurement:
    """Metrics of every block of `encoder` on full images streamed as batches [b, C, H, W] (already normalised as
    the model sees them). Only per-image statistics are kept between batches, so any number of images fits;
    the maps of the first `keep_images` images are kept for figures."""
    device = next(encoder.parameters()).device
    acc = ArtifactAccumulator(settings, patch_grid(encoder), keep_images=keep_images)
    for images in batches:
        images = images.to(device)
        acc.update(capture(encoder, images), images)
    return acc.result()
