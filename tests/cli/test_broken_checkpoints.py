"""Checkpoints that cannot be evaluated, through the entry points: a diverged run's NaN weights are one line naming a
tensor (semmae-analyze printed a table of NaN metrics and wrote bare NaN into its JSON; the linear probe blamed its
own learning rate), and semmae-export never replaces a file the user did not ask it to."""

import json

import pytest
import torch

from semmae.models.mae import MaskedAutoencoder
from semmae.utils.atomic import atomic_write_json
from tests.conftest import one_error_line, run_entry
from tests.models.test_loading import TINY, write_pretrain_ckpt

GEOMETRY = [f"backbone.{k}={v}" for k, v in TINY.items()]


@pytest.fixture
def nan_ckpt(tmp_path):
    torch.manual_seed(0)
    mae = MaskedAutoencoder(**TINY)
    with torch.no_grad():
        mae.encoder.blocks[0].attn.qkv.weight.fill_(float("nan"))
    return write_pretrain_ckpt(tmp_path / "diverged.ckpt", mae)


@pytest.mark.parametrize(
    "name,extra",
    [
        ("analyze", ["num_images=8"]),
        ("linprobe", ["dataset.train_subset=64", "dataset.val_subset=32", "logger=none"]),
        ("export", []),
    ],
)
def test_non_finite_weights_are_one_line_naming_the_tensor(tmp_path, fmnist_root, nan_ckpt, name, extra):
    code, err = run_entry(
        name,
        [f"ckpt={nan_ckpt}", f"dataset.root={fmnist_root}", *extra, *GEOMETRY, f"hydra.run.dir={tmp_path / 'run'}"]
        if name != "export"
        else [f"ckpt={nan_ckpt}", f"hydra.run.dir={tmp_path / 'run'}"],
    )
    line = one_error_line(err, f"semmae-{name}")
    assert code == 2 and "blocks.0.attn.qkv.weight has NaN or inf values" in line and "diverged" in line
    assert "blr" not in line


def test_json_is_strict(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": torch.tensor(2.0)})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON")) == {
        "a": None,
        "b": [None, 1.5],
        "c": 2.0,
    }


@pytest.fixture
def encoder_ckpt(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    return write_pretrain_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt", MaskedAutoencoder(**TINY))


def export(tmp_path, *args):
    return run_entry("export", [*args, f"hydra.run.dir={tmp_path / 'export'}"])


def test_export_refuses_an_existing_file_unless_asked(tmp_path, encoder_ckpt):
    other = encoder_ckpt.parent.parent / "encoder.pth"
    other.write_bytes(b"an export the user keeps")
    code, err = export(tmp_path, f"ckpt={encoder_ckpt}", f"out={other}")
    assert code == 2 and f"out={other} exists" in one_error_line(err, "semmae-export")
    assert other.read_bytes() == b"an export the user keeps"
    code, err = export(tmp_path, f"ckpt={encoder_ckpt}", f"out={other}", "overwrite=true")
    assert code == 0, err
    assert torch.load(other, weights_only=True)["semmae"]["kind"] == "encoder"


def test_export_never_writes_over_its_source(tmp_path, encoder_ckpt):
    before = encoder_ckpt.read_bytes()
    code, err = export(tmp_path, f"ckpt={encoder_ckpt}", f"out={encoder_ckpt}", "overwrite=true")
    assert code == 2 and "is the checkpoint the encoder is read from" in one_error_line(err, "semmae-export")
    assert encoder_ckpt.read_bytes() == before
