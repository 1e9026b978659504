"""Where a downstream task's encoder comes from: `latest` (the newest pretraining run's last.ckpt under outputs/),
a checkpoint path (anything semmae.models.checkpoints.load_encoder reads), or None (random initialisation from the
backbone config, the baseline a pretrained encoder is compared with)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semmae.errors import ConfigError
from semmae.models.checkpoints import load_encoder
from semmae.models.encoder import ViTEncoder

LATEST = "latest"
GEOMETRY = ("patch_size", "embed_dim", "depth", "num_heads")


def latest_pretrain_checkpoint(root: str | Path = ".") -> Path:
    """The most recently written <root>/outputs/pretrain/*/checkpoints/last.ckpt."""
    found = sorted(Path(root).glob("outputs/pretrain/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(
            f"no pretraining checkpoint found under {Path(root).resolve()}/outputs/pretrain/*/checkpoints/last.ckpt: "
            "run `make pretrain` first, or pass ckpt=PATH, or ckpt=null for a randomly initialised encoder"
        )
    return found[-1]


def build_encoder(
    source: str | None,
    img_size: int,
    patch_size: int,
    in_chans: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
    search_root: str | Path = ".",
    **overrides: Any,
) -> ViTEncoder:
    """An encoder for images of img_size x img_size with in_chans channels. From a checkpoint, the geometry is the
    checkpoint's and must match the backbone config (patch size, width, depth, heads); a different image size is
    fine: the position embeddings are resampled to it (bicubic, as MAE's fine-tuning does)."""
    if source is None:
        encoder = ViTEncoder(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                             depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
                             **overrides)
        encoder.source = None
        return encoder
    path = latest_pretrain_checkpoint(search_root) if str(source) == LATEST else Path(source)
    encoder = load_encoder(path, drop_path_rate=drop_path_rate, **overrides)
    wanted = dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    have = {k: encoder.config[k] for k in GEOMETRY}
    if have != wanted:
        raise ConfigError(
            f"the checkpoint {path} holds an encoder with {have}, but the backbone config asks for {wanted}: "
            "choose the backbone that matches the checkpoint (e.g. backbone=vit_micro), or another ckpt"
        )
    if encoder.config["in_chans"] != in_chans:
        raise ConfigError(
            f"the checkpoint {path} expects {encoder.config['in_chans']}-channel images but the dataset gives "
            f"{in_chans}: set dataset.channels={encoder.config['in_chans']} if the dataset allows it"
        )
    if encoder.config["img_size"] != img_size:
        encoder.set_input_size(img_size=(img_size, img_size))
        encoder.config["img_size"] = img_size
    encoder.source = str(path)
    return encoder
