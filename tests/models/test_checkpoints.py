import pytest
import torch

from semmae.errors import CheckpointError
from semmae.models.checkpoints import load_encoder
from semmae.models.mae import MaskedAutoencoder


def test_pretraining_checkpoint_loads_into_an_identical_encoder(tmp_path):
    torch.manual_seed(0)
    mae = MaskedAutoencoder(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                            decoder_num_heads=2).eval()
    ckpt = {"semmae": {"kind": "pretrain", "model": mae.config},
            "state_dict": {f"mae.{k}": v for k, v in mae.state_dict().items()}}
    torch.save(ckpt, tmp_path / "a.ckpt")
    enc = load_encoder(tmp_path / "a.ckpt").eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(enc.forward_features(x), mae.encoder.forward_features(x), atol=1e-6)


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_encoder(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a semmae pretraining checkpoint"):
        load_encoder(tmp_path / "other.ckpt")
