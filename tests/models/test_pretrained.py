"""Where a downstream encoder comes from: random init, a checkpoint path, or the newest pretraining run."""

import os
from pathlib import Path

import pytest
import torch

from semmae.errors import ConfigError
from semmae.models.mae import MaskedAutoencoder
from semmae.models.pretrained import build_encoder, latest_pretrain_checkpoint

GEOMETRY = dict(img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2)


def write_pretrain_checkpoint(path: Path, seed: int = 0, **geometry) -> MaskedAutoencoder:
    """A file laid out as semmae's pretraining checkpoints are (Lightning state dict + "semmae" metadata)."""
    torch.manual_seed(seed)
    mae = MaskedAutoencoder(**{**GEOMETRY, **geometry}, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"mae.{k}": v for k, v in mae.state_dict().items()},
                "semmae": {"kind": "pretrain", "model": dict(mae.config)}}, path)
    return mae


def test_null_source_builds_a_random_encoder_from_the_backbone_config():
    enc = build_encoder(None, **GEOMETRY, drop_path_rate=0.1)
    assert enc.source is None and enc.grid_size == (8, 8) and len(enc.blocks) == 4 and enc.embed_dim == 32


def test_latest_is_the_newest_pretraining_run(tmp_path):
    old = tmp_path / "outputs/pretrain/a/checkpoints/last.ckpt"
    new = tmp_path / "outputs/pretrain/b/checkpoints/last.ckpt"
    write_pretrain_checkpoint(old, seed=1)
    mae = write_pretrain_checkpoint(new, seed=2)
    os.utime(old, (2_000_000_000, 2_000_000_000))  # a newer mtime than `new`, despite the name order
    assert latest_pretrain_checkpoint(tmp_path) == old
    os.utime(new, (2_100_000_000, 2_100_000_000))
    enc = build_encoder("latest", **GEOMETRY, search_root=tmp_path)
    assert enc.source == str(new)
    assert torch.equal(enc.blocks[1].mlp.fc2.weight, mae.encoder.blocks[1].mlp.fc2.weight)


def test_no_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(ConfigError, match=r"make pretrain.*ckpt=null"):
        build_encoder("latest", **GEOMETRY, search_root=tmp_path)


def test_geometry_mismatch_is_a_config_error(tmp_path):
    path = tmp_path / "x.ckpt"
    write_pretrain_checkpoint(path)
    with pytest.raises(ConfigError, match="backbone"):
        build_encoder(str(path), **{**GEOMETRY, "embed_dim": 64})
    with pytest.raises(ConfigError, match="dataset.channels=1"):
        build_encoder(str(path), **{**GEOMETRY, "in_chans": 3})


def test_other_image_size_resamples_the_position_embeddings(tmp_path):
    path = tmp_path / "x.ckpt"
    mae = write_pretrain_checkpoint(path)
    enc = build_encoder(str(path), **{**GEOMETRY, "img_size": 48})
    assert enc.grid_size == (12, 12) and enc.pos_embed.shape == (1, 1 + 144, 32)
    assert not enc.pos_embed.requires_grad
    assert torch.equal(enc.pos_embed[:, :1], mae.encoder.pos_embed[:, :1])  # the CLS slot is kept
    assert torch.equal(enc.patch_embed.proj.weight, mae.encoder.patch_embed.proj.weight)
    assert enc(torch.randn(1, 1, 48, 48)).shape == (1, 32)
