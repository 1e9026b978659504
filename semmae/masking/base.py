"""The one masking interface (DESIGN.md section 3): a strategy returns a score per patch, [B, N], lower = more
likely visible; keep_lowest keeps the n_keep lowest. Every strategy thus gives exactly n_keep visible patches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from semmae.errors import ConfigError


@dataclass(frozen=True)
class Mask:
    ids_keep: torch.Tensor  # [B, n_keep] patch indices kept visible, in score order
    ids_restore: torch.Tensor  # [B, N] inverse permutation of the score argsort
    mask: torch.Tensor  # [B, N] bool, True = hidden


def keep_lowest(scores: torch.Tensor, n_keep: int) -> Mask:
    """Keep the n_keep lowest-scoring patches of each row (MAE's argsort masking, generalised to any scores)."""
    b, n = scores.shape
    if not 0 < n_keep <= n:
        raise ValueError(f"n_keep must be in [1, {n}], got {n_keep}")
    ids_shuffle = torch.argsort(scores, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    mask = torch.ones(b, n, dtype=torch.bool, device=scores.device)
    mask[:, :n_keep] = False
    mask = torch.gather(mask, 1, ids_restore)
    return Mask(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def num_keep(num_patches: int, mask_ratio: float) -> int:
    """n_keep = round(N * (1 - mask_ratio)), at least one visible patch."""
    return max(1, int(round(num_patches * (1.0 - mask_ratio))))


def check_range(key: str, value: float, low: float, high: float, closed: bool) -> float:
    """value as float if it lies in [low, high] (closed) or (low, high) (open), else a ConfigError naming key."""
    value = float(value)
    ok = low <= value <= high if closed else low < value < high
    if not ok:
        interval = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
        raise ConfigError(f"{key} must be in {interval}, got {value:g}")
    return value


class MaskingStrategy(ABC):
    """Base class. Subclasses implement scores(); everything else is shared.

    A strategy that reads more than the images from the batch says so in data_needs(), and the entry point asks the
    datamodule for those entries before training (semmae.pretrain), so a missing input fails before the first step."""

    name = "base"

    def __init__(self, mask_ratio: float = 0.75):
        mask_ratio = float(mask_ratio)
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"masking.mask_ratio must be in (0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio

    @abstractmethod
    def scores(
        self,
        images: torch.Tensor,
        grid_size: tuple[int, int],
        generator: torch.Generator | None,
        batch: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """Per-patch scores [B, N] on the images' device; lower = more likely visible."""

    def __call__(
        self,
        images: torch.Tensor,
        grid_size: tuple[int, int],
        generator: torch.Generator | None = None,
        batch: Mapping[str, Any] | None = None,
    ) -> Mask:
        scores = self.scores(images, grid_size, generator, batch)
        return keep_lowest(scores, num_keep(grid_size[0] * grid_size[1], self.mask_ratio))

    def data_needs(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor] | None]:
        """Extra batch entries the strategy reads, {key: producer}. A producer is a picklable callable that the data
        loader's workers apply to every augmented image (float [C, H, W] -> tensor); None means the dataset itself
        must provide the entry. Default: nothing beyond the images."""
        return {}

    def describe(self) -> str:
        """How the strategy is chosen on the command line (for error messages)."""
        return f"masking={self.name}"

    def params(self) -> dict[str, Any]:
        """The strategy's parameters, as shown in repr() (and so in the run's hyperparameters)."""
        return {"mask_ratio": self.mask_ratio}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
