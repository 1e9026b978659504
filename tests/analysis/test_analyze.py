"""semmae-analyze end to end on a fixture dataset: a semmae checkpoint written in its real format, a random
encoder, one and several encoders, ckpt=latest, and the one-line error when there is nothing to analyse."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semmae.analyze import latest_checkpoint, run
from semmae.errors import ConfigError
from semmae.models.mae import MaskedAutoencoder
from tests.conftest import REPO

TINY = ["backbone.embed_dim=32", "backbone.depth=3", "backbone.num_heads=2", "num_images=24", "batch_size=16",
        "figure_images=2"]
FILES = ("attention_blocks.png", "cls_attention.png", "artifacts.json", "artifacts.md", "metrics_vs_depth.png")


def write_checkpoint(path: Path, depth: int = 3) -> Path:
    """What PretrainTask saves: Lightning's state_dict (mae.* keys) plus the 'semmae' metadata."""
    torch.manual_seed(1)
    mae = MaskedAutoencoder(embed_dim=32, depth=depth, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                            decoder_num_heads=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"mae.{k}": v for k, v in mae.state_dict().items()},
                "semmae": {"kind": "pretrain", "model": dict(mae.config), "masking": "RandomMasking(0.75)"}}, path)
    return path


def test_one_checkpoint_writes_the_five_files(compose_cfg, fmnist_root, tmp_path):
    ckpt = write_checkpoint(tmp_path / "runA" / "checkpoints" / "last.ckpt")
    cfg = compose_cfg("analyze", [f"ckpt={ckpt}", f"dataset.root={fmnist_root}", *TINY])
    metrics = run(cfg)
    out = Path(cfg.paths.output_dir)
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = json.loads((out / "artifacts.json").read_text())
    assert report["encoder"] == "runA" and report["num_images"] == 24
    assert [b["block"] for b in report["blocks"]] == [1, 2, 3] and report["shallow_blocks"] == [1]
    assert metrics["attn/shallow_sink_ratio"] == pytest.approx(report["blocks"][0]["sink_ratio"])
    assert metrics["attn/block_03/sink_ratio"] >= 1.0
    assert json.loads((out / "results.json").read_text())["metrics"] == metrics
    assert (out / "artifacts.md").read_text().count("\n| ") == 5


def test_checkpoint_and_random_side_by_side(compose_cfg, fmnist_root, tmp_path):
    ckpt = write_checkpoint(tmp_path / "runA" / "checkpoints" / "last.ckpt")
    cfg = compose_cfg("analyze", [f"ckpt=[{ckpt},random]", f"dataset.root={fmnist_root}", *TINY])
    metrics = run(cfg)
    out = Path(cfg.paths.output_dir)
    for sub in ("1_runA", "2_random_init"):
        for name in FILES:
            assert (out / sub / name).is_file(), (sub, name)
    for name in ("comparison.png", "comparison.md", "comparison.json"):
        assert (out / name).is_file()
    table = (out / "comparison.md").read_text()
    assert "| runA |" in table and "| random init |" in table
    both = json.loads((out / "comparison.json").read_text())
    assert set(both) == {"runA", "random init"} and both["random init"]["source"] == "random"
    assert "runA/attn/shallow_sink_ratio" in metrics and "random init/attn/block_02/attention_entropy" in metrics
    # different weights, different attention
    assert metrics["runA/attn/block_01/sink_ratio"] != metrics["random init/attn/block_01/sink_ratio"]


def test_latest_picks_the_newest_checkpoint_or_says_how_to_get_one(tmp_path):
    with pytest.raises(ConfigError, match="make pretrain"):
        latest_checkpoint(tmp_path, "outputs/pretrain/*/checkpoints/last.ckpt")
    old = write_checkpoint(tmp_path / "outputs" / "pretrain" / "a" / "checkpoints" / "last.ckpt")
    new = write_checkpoint(tmp_path / "outputs" / "pretrain" / "b" / "checkpoints" / "last.ckpt")
    os.utime(old, (2e9, 2e9))
    os.utime(new, (1e9, 1e9))
    assert latest_checkpoint(tmp_path, "outputs/pretrain/*/checkpoints/last.ckpt") == str(old)


def test_cli_without_checkpoints_fails_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PROJECT_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "semmae.analyze", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("semmae-analyze: error: ckpt=latest: no checkpoint"), proc.stderr
