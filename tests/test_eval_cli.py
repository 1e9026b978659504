"""The evaluation entry points from the command line: export prints a line that really loads the encoder into
timm; a bad checkpoint source ends the run with one line and exit code 2 (the messages for every kind of bad or
mismatched checkpoint are tested in-process in tests/models/test_loading.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semmae.models.mae import MaskedAutoencoder

REPO = Path(__file__).resolve().parents[1]


def run_module(module, args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PROJECT_ROOT"}
    env.update(PYTHONPATH=str(REPO), WANDB_MODE="offline")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def pretrain_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    mae = MaskedAutoencoder(
        embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2
    )
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save(
        {
            "semmae": {"kind": "pretrain", "model": mae.config},
            "state_dict": {f"mae.{k}": v for k, v in mae.state_dict().items()},
        },
        path,
    )
    return path, mae.encoder.eval()


def test_export_prints_the_line_that_loads_it_into_timm(tmp_path, pretrain_ckpt):
    path, encoder = pretrain_ckpt
    out = tmp_path / "encoder.pth"
    proc = run_module("semmae.export", [f"ckpt={path}", f"out={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(ln.strip() for ln in proc.stdout.splitlines() if "timm.create_model(" in ln)
    import timm

    scope = {"timm": timm, "torch": torch}
    exec(line, scope)  # the printed line, as a user would paste it
    model = scope["model"].eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(model.forward_features(x), encoder.forward_features(x), atol=1e-5)


@pytest.mark.parametrize(
    "module,args,needle",
    [
        ("semmae.linprobe", ["ckpt=/no/such.ckpt"], "checkpoint not found: /no/such.ckpt"),
        ("semmae.finetune", [], "ckpt=latest: no pretraining checkpoint"),
    ],
)
def test_bad_checkpoint_source_is_one_line(tmp_path, module, args, needle):
    proc = run_module(module, [*args, "logger=none"], tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"semmae-{module.split('.')[1]}: error: ") and needle in lines[0], lines[0]
