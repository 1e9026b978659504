"""The asymmetry between pretraining and fine-tuning, measured directly (docs/artifacts.md#asymmetry): every attention
metric on the pretraining view (the encoder on the visible patches of a seeded mask, any strategy, the checkpoint's
mask ratio) and on the full view of the same images, each expressed relative to its fair share in its own view, and
the per-block difference pretraining minus full.

The pretraining view has about 4x fewer tokens at ratio 0.75, so uniform attention already gives each token about 4x
the share: a share is multiplied by the number of tokens it is a fair share of (T, or P over patches) before the
views are compared."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from semmae.analysis import cls_stats as C
from semmae.analysis import head_sinks as HS
from semmae.analysis import metrics as M
from semmae.analysis.artifacts import ArtifactMeasurement, block_key, shallow_means
from semmae.errors import CheckpointError, ConfigError
from semmae.masking.base import Mask, MaskingStrategy

HEAD_METRICS = ("sink_mass", "nop_heads", "broadcast_heads")


@dataclass(frozen=True)
class AsymmetrySettings:
    """mask_ratio: of the pretraining view (None = the checkpoint's, else the masking strategy's own); seed: of the
    masks (one generator for the whole stream of batches)."""

    mask_ratio: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.mask_ratio is not None and not 0 < self.mask_ratio < 1:
            raise ConfigError(
                f"analysis.asymmetry.mask_ratio={self.mask_ratio}: must be in (0, 1), or null for the "
                "checkpoint's ratio"
            )


def checkpoint_mask_ratio(source: str | None, trust: bool = False) -> float | None:
    """The mask ratio a semmae pretraining checkpoint was trained with (its record of the masking strategy), or None
    when the source records none (random init, timm, exported encoders, foreign files)."""
    if source is None or source.startswith("timm:") or not Path(source).is_file():
        return None
    from semmae.models.weights import read_checkpoint

    try:
        ckpt = read_checkpoint(source, trust=trust)
    except CheckpointError:
        return None
    records = [(ckpt.get("semmae") or {}).get("masking"), (ckpt.get("hyper_parameters") or {}).get("masking")]
    for record in records:
        found = re.search(r"mask_ratio=([0-9.eE+-]+)", str(record)) if record is not None else None
        if found:
            return float(found.group(1))
    return None


def pretraining_mask(
    strategy: MaskingStrategy,
    images: torch.Tensor,
    grid: tuple[int, int],
    generator: torch.Generator,
    full_patches: torch.Tensor | None = None,
) -> Mask:
    """The strategy's mask of images as pretraining draws it: at the end of training (progress 1), with the
    encoder's patch tokens of the full image as "features" for a strategy that reads them, and each entry a
    strategy asks the data loader for produced from the images."""
    batch: dict[str, Any] = {"image": images, "progress": 1.0}
    if strategy.reads_features(1.0):
        if full_patches is None:
            raise ConfigError(f"{strategy.describe()} reads the encoder's features, which this view does not have")
        batch["features"] = full_patches
    for key, producer in strategy.data_needs().items():
        if producer is None:
            raise ConfigError(
                f"{strategy.describe()} reads batch['{key}'] from the dataset, which semmae-analyze "
                "does not load: measure the asymmetry with another masking= strategy"
            )
        batch[key] = torch.stack([producer(img) for img in images.cpu()]).to(images.device)
    return strategy(images, grid, generator, batch)


def fair_shares(num_tokens: int, num_patches: int, num_prefix: int, flat_fraction: float) -> dict[str, float]:
    """What each metric is under uniform attention in a view of T tokens, P of them patches (1 where the metric is
    already relative to its fair share, or is not a share)."""
    n_flat = min(num_patches, max(1, round(flat_fraction * num_patches)))
    out = {name: 1.0 for name in (*M.METRICS, *C.STATS, *HEAD_METRICS)}
    out["prefix_share"] = num_prefix / num_tokens
    out["flat_patch_share"] = n_flat / num_patches
    out["sink_mass"] = 1.0 / num_tokens
    out.update({name: C.fair_share(name, num_tokens, num_patches) for name in C.STATS})
    return out


def view_values(
    artifacts: ArtifactMeasurement,
    cls: list[dict[str, float]] | None,
    heads: list[HS.BlockHeads] | None,
    num_tokens: int,
    num_patches: int,
    num_prefix: int,
) -> list[dict[str, float]]:
    """Every attention metric of one view, per block, divided by its fair share in that view."""
    fair = fair_shares(num_tokens, num_patches, num_prefix, artifacts.settings.flat_fraction)
    out = []
    for i, block in enumerate(artifacts.blocks):
        values = dict(block)
        if cls is not None:
            values.update(cls[i])
        if heads is not None:
            values.update({k: v for k, v in heads[i].scalars().items() if k in HEAD_METRICS})
        out.append({k: v / fair[k] for k, v in values.items()})
    return out


@dataclass
class Asymmetry:
    """Per block, the fair-share-normalised metrics of both views and their difference (pretraining - full)."""

    full: list[dict[str, float]]
    pretraining: list[dict[str, float]]
    difference: list[dict[str, float]]
    shallow: dict[str, float]
    shallow_blocks: list[int]
    masking: str
    mask_ratio: float
    visible_patches: int
    tokens: dict[str, int] = field(default_factory=dict)  # T of each view

    def scalars(self, prefix: str = "asym") -> dict[str, float]:
        depth = len(self.difference)
        out = {
            f"{prefix}/{block_key(i + 1, depth)}/{k}": v for i, d in enumerate(self.difference) for k, v in d.items()
        }
        out.update({f"{prefix}/{k}": v for k, v in self.shallow.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "masking": self.masking,
            "mask_ratio": self.mask_ratio,
            "visible_patches": self.visible_patches,
            "tokens": self.tokens,
            "shallow_blocks": self.shallow_blocks,
            "shallow": self.shallow,
            "blocks": [
                {"block": i + 1, "difference": d, "full": f, "pretraining": p}
                for i, (d, f, p) in enumerate(zip(self.difference, self.full, self.pretraining, strict=True))
            ],
        }


def asymmetry(
    full: list[dict[str, float]],
    pretraining: list[dict[str, float]],
    shallow_spec,
    masking: str,
    mask_ratio: float,
    visible: int,
    tokens: dict[str, int],
) -> Asymmetry:
    """The difference pretraining - full of two views' normalised metrics, per block and over the shallow blocks."""
    diff = [{k: p[k] - f[k] for k in f if k in p} for f, p in zip(full, pretraining, strict=True)]
    names = list(diff[0]) if diff else []
    idx, shallow = shallow_means(diff, shallow_spec, names)
    return Asymmetry(
        full=full,
        pretraining=pretraining,
        difference=diff,
        shallow=shallow,
        shallow_blocks=idx,
        masking=masking,
        mask_ratio=mask_ratio,
        visible_patches=visible,
        tokens=tokens,
    )
