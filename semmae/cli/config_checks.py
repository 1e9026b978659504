"""One validation pass over the composed config before any work starts: the settings that every task shares (seed,
trainer limits, loader settings, output paths) are checked here, each failure one line naming the key and what it
takes, so that a bad value never reaches Lightning, torch or the filesystem as a traceback. Settings that belong to
one object (a masking strategy, an optimiser node) are checked where that object is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from semmae.errors import ConfigError

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range


def whole(key: str, value: Any, low: int, allowed: tuple = ()) -> None:
    """value is an int >= low (bools are not), or one of allowed."""
    if value in allowed and not isinstance(value, bool):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        also = f" (or {', '.join(map(repr, allowed))})" if allowed else ""
        raise ConfigError(f"{key}={value!r}: must be a whole number >= {low}{also}")


def check_seed(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"seed={value!r}: must be a whole number from 0 to {MAX_SEED}")


def check_trainer(trainer: DictConfig) -> None:
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    whole("trainer.max_steps", steps, 1, allowed=(-1, None))
    if epochs is None and steps in (-1, None):
        raise ConfigError("trainer.max_epochs=null and no trainer.max_steps: give the run an end (max_epochs >= 1)")
    if epochs is not None:
        whole("trainer.max_epochs", epochs, 1)
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip >= 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip!r}: must be a number >= 0 (or null: no clipping)")
    whole("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), 1)


def check_dataset(dataset: DictConfig) -> None:
    whole("dataset.batch_size", dataset.get("batch_size", 1), 1)
    whole("dataset.eval_batch_size", dataset.get("eval_batch_size"), 1, allowed=(None,))
    whole("dataset.num_workers", dataset.get("num_workers", "auto"), 0, allowed=("auto",))
    for key in ("train_subset", "val_subset", "train_per_class"):
        whole(f"dataset.{key}", dataset.get(key), 1, allowed=(None,))
    timeout = dataset.get("loader_timeout_s", 0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ConfigError(f"dataset.loader_timeout_s={timeout!r}: must be a number of seconds >= 0 (0: wait forever)")
    scale = dataset.get("crop_scale")
    if scale is not None:
        values = list(scale) if not isinstance(scale, (str, int, float)) else [scale]
        numbers = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numbers or not 0 < values[0] <= values[1] <= 1:
            raise ConfigError(
                f"dataset.crop_scale={values}: must be [low, high] with 0 < low <= high <= 1 "
                "(the share of the image a random crop keeps)"
            )


def check_writable_path(key: str, path: Any) -> None:
    """path can become a directory or file: no part of it is an existing file (a run directory below a file)."""
    if path is None:
        return
    for part in [Path(str(path)), *Path(str(path)).parents]:
        if part.exists() and not part.is_dir() and part != Path(str(path)):
            raise ConfigError(
                f"{key}={path}: {part} is a file, so nothing can be written below it; choose another path"
            )


def check_config(cfg: DictConfig) -> None:
    """Every shared setting the composed config holds; a task without a trainer (analyze, masks, export) has fewer."""
    if "seed" in cfg:
        check_seed(cfg.get("seed"))
    if isinstance(cfg.get("trainer"), DictConfig):
        check_trainer(cfg.trainer)
    if isinstance(cfg.get("dataset"), DictConfig):
        check_dataset(cfg.dataset)
    if cfg.get("out") is not None:
        check_writable_path("out", cfg.out)
