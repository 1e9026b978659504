"""What ckpt= names, before anything is read: a file, `latest` (the newest checkpoint matching a glob), timm:NAME, a
Hugging Face model directory (hf:DIR, or a DIR that holds config.json), or null / `random` (a randomly initialised
encoder). semmae.models.weights reads the sources; every entry point
resolves ckpt= here (semmae.tasks.evaluation.resolve_ckpt, semmae.cli.analyze)."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from semmae.errors import CheckpointError, NoCheckpointError

SOURCES_HELP = (
    "ckpt= takes a checkpoint file (semmae .ckpt, exported encoder, official MAE .pth, ViT state dict), "
    "'latest' (newest pretraining run), 'timm:MODEL_NAME' with ckpt_file=WEIGHTS, a Hugging Face ViT or "
    "ViTMAE directory (hf:DIR, or a DIR with config.json), or null / random (random init)"
)
HF_PREFIX = "hf:"
LATEST_PATTERNS = ("outputs/pretrain/*/checkpoints/last.ckpt", "multirun/pretrain/*/*/checkpoints/last.ckpt")
RANDOM_SOURCES = ("random", "null", "none")  # spellings of ckpt=null (a list such as ckpt=[PATH,random] reads better)


def find_latest(root: str | Path = ".", pattern: str | None = None) -> Path:
    """The most recently modified file matching root/pattern, a glob that may name any task's checkpoints (e.g.
    outputs/finetune/*/checkpoints/last.ckpt); by default the newest pretraining checkpoint, LATEST_PATTERNS."""
    patterns = LATEST_PATTERNS if pattern is None else (pattern,)
    found = [Path(p) for pat in patterns for p in glob.glob(os.path.join(str(root), pat))]
    if not found:
        where = (
            f"no pretraining checkpoint under {Path(root).resolve()}/{LATEST_PATTERNS[0]}"
            if pattern is None
            else f"no checkpoint matches {Path(root) / pattern}"
        )
        raise NoCheckpointError(
            f"ckpt=latest: {where}; run `make pretrain` first, or pass ckpt=PATH, or ckpt=null "
            "(or ckpt=random) for a randomly initialised encoder"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def is_random(source: Any) -> bool:
    """ckpt=null and its spellings RANDOM_SOURCES ('random') ask for a randomly initialised encoder."""
    return source is None or str(source).lower() in RANDOM_SOURCES


def resolve_source(source: str | Path | None, root: str | Path = ".", pattern: str | None = None) -> str | None:
    """null / 'random' -> None (random init); 'latest' -> find_latest(root, pattern); a file must exist; timm:NAME
    passes through; hf:DIR, or a directory (which must hold a Hugging Face config.json), -> 'hf:DIR'."""
    if is_random(source):
        return None
    source = str(source)
    if source == "latest":
        return str(find_latest(root, pattern))
    if source.startswith("timm:"):
        return source
    if source.startswith(HF_PREFIX) or Path(source).is_dir():
        directory = Path(source[len(HF_PREFIX) :] if source.startswith(HF_PREFIX) else source)
        if not directory.is_dir():
            raise CheckpointError(
                f"checkpoint not found: {directory} (ckpt=hf:DIR takes a Hugging Face model directory)"
            )
        if not (directory / "config.json").is_file():
            raise CheckpointError(
                f"{directory} is a directory without config.json: not a Hugging Face model directory ({SOURCES_HELP})"
            )
        return f"{HF_PREFIX}{directory}"
    if not Path(source).is_file():
        raise CheckpointError(f"checkpoint not found: {source} ({SOURCES_HELP})")
    return source
