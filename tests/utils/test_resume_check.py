"""Resuming from a checkpoint that is not this run's: one line saying what differs, not Lightning's key dump."""

import pytest
import torch
from omegaconf import OmegaConf

from semmae.cli.run_steps import check_resume
from semmae.errors import CheckpointError
from semmae.models.mae import MaskedAutoencoder


class Task(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.mae = MaskedAutoencoder(
            img_size=32,
            patch_size=4,
            in_chans=1,
            embed_dim=width,
            depth=2,
            num_heads=2,
            decoder_embed_dim=16,
            decoder_depth=1,
            decoder_num_heads=2,
        )


CFG = OmegaConf.create({"trust_checkpoint": False})


def save(tmp_path, payload):
    path = tmp_path / "last.ckpt"
    torch.save(payload, path)
    return str(path)


def test_the_same_model_resumes(tmp_path):
    check_resume(CFG, Task(32), save(tmp_path, {"state_dict": Task(32).state_dict()}))


def test_another_width_is_one_line_with_counts_and_examples(tmp_path):
    path = save(tmp_path, {"state_dict": Task(64).state_dict(), "semmae": {"kind": "pretrain"}})
    with pytest.raises(CheckpointError) as err:
        check_resume(CFG, Task(32), path)
    text = str(err.value)
    assert "\n" not in text and "does not fit this run's model (pretrain checkpoint;" in text
    assert "tensors of another shape, checkpoint vs model (e.g. mae." in text and "[1, 65, 64] vs [1, 65, 32]" in text
    assert ".hydra/overrides.yaml" in text and len(text) < 600


def test_an_encoder_file_is_not_a_training_checkpoint(tmp_path):
    path = save(tmp_path, {"model": Task(32).mae.encoder.state_dict()})
    with pytest.raises(CheckpointError, match="not a training checkpoint.*use ckpt=PATH"):
        check_resume(CFG, Task(32), path)
