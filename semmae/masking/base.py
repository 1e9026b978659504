"""The one masking interface (docs/masking.md#the-interface): a strategy returns a score per patch, [B, N],
lower = more likely visible; keep_lowest keeps the n_keep lowest. Every strategy thus gives exactly n_keep visible
patches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

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


def training_progress(global_step: int, total_steps: int) -> float:
    """Training progress p in [0, 1] (docs/masking.md#training-progress): optimiser steps done over the run's total.
    A pure function of global_step, which a resumed run restores, so a resumed run sees the progress an
    uninterrupted one saw at the same step."""
    return min(1.0, max(0.0, int(global_step) / max(1, int(total_steps))))


def batch_progress(batch: Mapping[str, Any] | None) -> float:
    """batch["progress"] (a Python float that PretrainTask.make_mask sets for strategies with uses_progress), or 0.0
    (the start of training) when the batch has none, e.g. when a strategy is called on its own."""
    value = None if batch is None else batch.get("progress")
    return 0.0 if value is None else min(1.0, max(0.0, float(value)))


VISIBLE_COUNTS = {"official": int, "round": round}  # masking.visible_count: how N * (1 - mask_ratio) becomes n_keep


def num_keep(num_patches: int, mask_ratio: float, visible_count: str = "official") -> int:
    """Visible patches of N at mask_ratio. official: int(N * (1 - mask_ratio)), MAE's len_keep, float rounding
    included (196 at 0.9 -> 19; 10 x (1 - 0.9) = 0.9999999999999998 -> 0); round: round(N * (1 - mask_ratio))
    (196 at 0.9 -> 20). None visible, or none masked (a loss of exactly 0), is a ConfigError naming the key."""
    n = int(VISIBLE_COUNTS[visible_count](num_patches * (1.0 - mask_ratio)))
    if not 0 < n < num_patches:
        what = "no patch is visible" if n < 1 else "nothing is masked and the loss is 0"
        raise ConfigError(
            f"masking.mask_ratio={mask_ratio:g} keeps {n} of {num_patches} patches visible "
            f"({visible_count}: {VISIBLE_COUNTS[visible_count].__name__}({num_patches} x (1 - {mask_ratio:g}))), so "
            f"{what}: choose a ratio that keeps 1 to {num_patches - 1}"
        )
    return n


def to_float(key: str, value: Any) -> float:
    """value as float, else a ConfigError naming key (e.g. masking.mask_ratio=abc)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {value!r}") from None


def check_range(key: str, value: float, low: float, high: float, closed: bool) -> float:
    """value as float if it lies in [low, high] (closed) or (low, high) (open), else a ConfigError naming key."""
    value = to_float(key, value)
    ok = low <= value <= high if closed else low < value < high
    if not ok:
        interval = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
        raise ConfigError(f"{key} must be in {interval}, got {value:g}")
    return value


class MaskingStrategy(ABC):
    """Base class. Subclasses implement scores(); everything else is shared.

    A strategy that reads more than the images from the batch says so in data_needs(), and the entry point asks the
    datamodule for those entries before training (semmae.cli.pretrain), so a missing input fails before the first
    step."""

    name = "base"
    uses_progress = False  # True: reads batch["progress"], the training progress in [0, 1], set by make_mask

    def __init__(self, mask_ratio: float = 0.75, visible_count: str = "official"):
        self.mask_ratio = check_range("masking.mask_ratio", mask_ratio, 0.0, 1.0, closed=False)
        if visible_count not in VISIBLE_COUNTS:
            raise ConfigError(f"masking.visible_count must be official or round, got {visible_count!r}")
        self.visible_count = visible_count

    def n_keep(self, num_patches: int) -> int:
        """Visible patches per image on N patches (num_keep with this strategy's rule)."""
        return num_keep(num_patches, self.mask_ratio, self.visible_count)

    def check(self, grid_size: tuple[int, int]) -> None:
        """ConfigError if the strategy cannot mask this patch grid; called when the model is built."""
        self.n_keep(grid_size[0] * grid_size[1])

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
        return keep_lowest(scores, self.n_keep(grid_size[0] * grid_size[1]))

    def needs_features(self, progress: float) -> bool:
        """True when scores() reads batch["features"] at this training progress: the encoder's patch tokens of the
        full augmented image [B, N, D], which the pretraining task computes (no gradient) and passes in the batch
        (semantic_features after its warm-up). Default: never."""
        return False

    def reads_features(self, progress: float) -> bool:
        """Whether a batch at this training progress must carry "features": needs_features at the progress the
        strategy is given (0.0 for one that does not read it, uses_progress False). The one rule every caller asks."""
        return self.needs_features(progress if self.uses_progress else 0.0)

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
        return {"mask_ratio": self.mask_ratio, "visible_count": self.visible_count}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
