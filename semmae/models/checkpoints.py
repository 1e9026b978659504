"""One path for loading encoder weights: semmae pretraining checkpoints -> a ViTEncoder with matching geometry.
(Other sources — exported encoders, official MAE .pth files, timm weights — plug into load_encoder_state.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from semmae.errors import CheckpointError
from semmae.models.encoder import ViTEncoder

ENCODER_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated file, not a torch file, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def load_encoder_state(ckpt: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """-> (encoder config, encoder state dict in timm names) from a semmae pretraining checkpoint."""
    meta = ckpt.get("semmae")
    if not isinstance(meta, dict) or "model" not in meta or "state_dict" not in ckpt:
        raise CheckpointError(f"{source} is not a semmae pretraining checkpoint (no 'semmae' metadata)")
    prefix = "mae.encoder."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{source} holds no encoder weights (no '{prefix}*' keys)")
    return {k: meta["model"][k] for k in ENCODER_KEYS if k in meta["model"]}, state


def load_encoder(path: str | Path, **overrides: Any) -> ViTEncoder:
    """Build a ViTEncoder with the checkpoint's geometry (overrides: e.g. drop_path_rate, global_pool) and load it."""
    config, state = load_encoder_state(read_checkpoint(path), str(path))
    encoder = ViTEncoder(**{**config, **overrides})
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head", "fc_norm"))]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the encoder: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return encoder
