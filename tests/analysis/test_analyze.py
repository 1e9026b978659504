"""semmae-analyze end to end on a fixture dataset: a semmae checkpoint written in its real format, a random
encoder, one and several encoders, ckpt=latest, and the one-line error when there is nothing to analyse."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semmae.cli.analyze import RANDOM, analysis_encoder, run, sources
from semmae.errors import ConfigError
from semmae.models.loading import random_encoder
from semmae.models.mae import MaskedAutoencoder
from semmae.models.sources import find_latest
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
        find_latest(tmp_path, "outputs/pretrain/*/checkpoints/last.ckpt")
    old = write_checkpoint(tmp_path / "outputs" / "pretrain" / "a" / "checkpoints" / "last.ckpt")
    new = write_checkpoint(tmp_path / "outputs" / "pretrain" / "b" / "checkpoints" / "last.ckpt")
    os.utime(old, (2e9, 2e9))
    os.utime(new, (1e9, 1e9))
    assert str(find_latest(tmp_path, "outputs/pretrain/*/checkpoints/last.ckpt")) == str(old)


def test_cli_without_checkpoints_fails_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PROJECT_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "semmae.analyze", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("semmae-analyze: error: ckpt=latest: no checkpoint"), proc.stderr


def test_latest_glob_can_name_any_tasks_checkpoints(compose_cfg, tmp_path):
    ckpt = write_checkpoint(tmp_path / "outputs" / "finetune" / "r1" / "checkpoints" / "last.ckpt")
    cfg = compose_cfg("analyze", [f"paths.root_dir={tmp_path}", "latest_glob=outputs/finetune/*/checkpoints/last.ckpt"])
    assert sources(cfg) == [str(ckpt)]
    cfg = compose_cfg("analyze", [f"paths.root_dir={tmp_path}"])  # the default: pretraining runs only
    with pytest.raises(ConfigError, match="no checkpoint matches .*outputs/pretrain"):
        sources(cfg)


@pytest.mark.parametrize("spelling", ["ckpt=random", "ckpt=null", "ckpt=[random]", "ckpt=[null]"])
def test_random_encoder_is_the_one_every_task_builds(compose_cfg, spelling):
    """ckpt=random and ckpt=null are one source, built by semmae.models.loading.random_encoder: MAE's
    initialisation, seeded by cfg.seed, the same weights as analyze built before it used the shared builder."""
    cfg = compose_cfg("analyze", [spelling, "seed=3"])
    assert sources(cfg) == [RANDOM]
    enc = analysis_encoder(cfg, RANDOM)
    assert enc.source is None
    torch.manual_seed(123)  # the global state does not matter: the encoder is seeded by cfg.seed
    again = analysis_encoder(cfg, RANDOM).state_dict()
    shared = random_encoder(dict(cfg.backbone), seed=3, img_size=32, in_chans=cfg.dataset.channels).state_dict()
    b = cfg.backbone
    torch.manual_seed(3)  # what analyze built before (its own copy of the recipe)
    before = MaskedAutoencoder(img_size=b.img_size, patch_size=b.patch_size, in_chans=cfg.dataset.channels,
                               embed_dim=b.embed_dim, depth=b.depth, num_heads=b.num_heads, mlp_ratio=b.mlp_ratio,
                               decoder_embed_dim=b.decoder_embed_dim, decoder_depth=b.decoder_depth,
                               decoder_num_heads=b.decoder_num_heads).encoder.state_dict()
    state = enc.state_dict()
    assert state.keys() == shared.keys() == before.keys() == again.keys()
    for k in state:
        assert torch.equal(state[k], shared[k]) and torch.equal(state[k], before[k]) and torch.equal(state[k], again[k]), k


def test_ckpt_file_without_a_timm_source_is_refused(compose_cfg, tmp_path):
    cfg = compose_cfg("analyze", ["ckpt=random", f"ckpt_file={tmp_path / 'w.safetensors'}"])
    with pytest.raises(ConfigError, match="only used with ckpt=timm"):
        sources(cfg)
