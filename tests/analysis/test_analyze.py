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

TINY = [
    "backbone.embed_dim=32",
    "backbone.depth=3",
    "backbone.num_heads=2",
    "num_images=24",
    "batch_size=16",
    "figure_images=2",
]
FILES = (
    "attention_blocks.png",
    "cls_attention.png",
    "sink_classes.png",
    "artifacts.json",
    "artifacts.md",
    "metrics_vs_depth.png",
)


def write_checkpoint(path: Path, depth: int = 3) -> Path:
    """What PretrainTask saves: Lightning's state_dict (mae.* keys) plus the 'semmae' metadata."""
    torch.manual_seed(1)
    mae = MaskedAutoencoder(
        embed_dim=32, depth=depth, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {f"mae.{k}": v for k, v in mae.state_dict().items()},
            "semmae": {"kind": "pretrain", "model": dict(mae.config), "masking": "RandomMasking(0.75)"},
        },
        path,
    )
    return path


def test_one_checkpoint_writes_its_files(compose_cfg, fmnist_root, tmp_path):
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
    text = (out / "artifacts.md").read_text()
    assert text.split("\n## ")[0].count("\n| ") == 5  # the metric table: header + 3 blocks + shallow
    for section in (
        "## Head sinks",
        "## CLS statistics",
        "## High-norm outliers",
        "## Semantic invariance",
        "## Asymmetry",
        "Times (s): capture",
    ):
        assert section in text, section
    assert {"heads", "cls", "outliers", "invariance", "asymmetry", "timings_s"} <= set(report)
    assert report["asymmetry"]["mask_ratio"] == 0.75 and report["asymmetry"]["visible_patches"] == 16
    assert "asym/shallow_sink_ratio" in metrics and "attn/block_01/nop_heads" in metrics


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
    proc = subprocess.run(
        [sys.executable, "-m", "semmae.analyze", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    before = MaskedAutoencoder(
        img_size=b.img_size,
        patch_size=b.patch_size,
        in_chans=cfg.dataset.channels,
        embed_dim=b.embed_dim,
        depth=b.depth,
        num_heads=b.num_heads,
        mlp_ratio=b.mlp_ratio,
        decoder_embed_dim=b.decoder_embed_dim,
        decoder_depth=b.decoder_depth,
        decoder_num_heads=b.decoder_num_heads,
    ).encoder.state_dict()
    state = enc.state_dict()
    assert state.keys() == shared.keys() == before.keys() == again.keys()
    for k in state:
        assert (
            torch.equal(state[k], shared[k]) and torch.equal(state[k], before[k]) and torch.equal(state[k], again[k])
        ), k


def test_ckpt_file_without_a_timm_source_is_refused(compose_cfg, tmp_path):
    cfg = compose_cfg("analyze", ["ckpt=random", f"ckpt_file={tmp_path / 'w.safetensors'}"])
    with pytest.raises(ConfigError, match="only used with ckpt=timm"):
        sources(cfg)


def write_planted_export(path: Path) -> Path:
    """An exported encoder (32 px, 64 patches) whose block-1 MLP neuron 7 writes a large token at patch 5."""
    from semmae.models.encoder import ViTEncoder
    from semmae.models.export import export_encoder
    from tests.analysis.planting import plant_outlier_neuron

    torch.manual_seed(0)
    enc = ViTEncoder(img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=3, num_heads=2)
    plant_outlier_neuron(enc, 5, 7)
    return export_encoder(enc, path)


def test_a_fixed_encoder_is_shown_beside_the_plain_one(compose_cfg, fmnist_root, tmp_path):
    ckpt = write_planted_export(tmp_path / "planted.pth")
    cfg = compose_cfg(
        "analyze",
        [
            f"ckpt={ckpt}",
            f"dataset.root={fmnist_root}",
            *TINY,
            "encoder.test_time_registers=1",
            "encoder.fix.images=16",
            "encoder.fix.register_neurons=1",
        ],
    )
    metrics = run(cfg)
    out = Path(cfg.paths.output_dir)
    both = json.loads((out / "comparison.json").read_text())
    fixed = "planted + test-time registers (1)"
    assert set(both) == {"planted", fixed}
    assert metrics["planted/attn/outlier_fraction"] == pytest.approx(1 / 64)
    assert metrics[f"{fixed}/attn/outlier_fraction"] == 0.0  # the outlier moved to the register
    assert both[fixed]["outliers"]["register_neurons"] == []
    assert both["planted"]["outliers"]["register_neurons"][0]["neuron"] == 7
    assert "## Diagnostics (model level)" in (out / "comparison.md").read_text()


def test_a_fix_with_nothing_to_fix_warns_and_shows_one_encoder(compose_cfg, fmnist_root, tmp_path):
    cfg = compose_cfg(
        "analyze",
        ["ckpt=random", f"dataset.root={fmnist_root}", *TINY, "encoder.test_time_registers=2", "encoder.fix.images=16"],
    )
    with pytest.warns(UserWarning, match="no high-norm outliers"):
        run(cfg)
    assert (Path(cfg.paths.output_dir) / "artifacts.json").is_file()
    assert not (Path(cfg.paths.output_dir) / "comparison.json").exists()


def test_the_pretraining_view_takes_the_checkpoints_ratio_and_the_chosen_strategy(compose_cfg, fmnist_root, tmp_path):
    ckpt = write_checkpoint(tmp_path / "runA" / "checkpoints" / "last.ckpt")
    data = torch.load(ckpt, weights_only=False)
    data["semmae"]["masking"] = "RandomMasking(mask_ratio=0.5, visible_count='official')"
    torch.save(data, ckpt)
    cfg = compose_cfg(
        "analyze", [f"ckpt={ckpt}", f"dataset.root={fmnist_root}", *TINY, "masking=block", "analysis.parts=[asymmetry]"]
    )
    run(cfg)
    report = json.loads((Path(cfg.paths.output_dir) / "artifacts.json").read_text())
    assert report["asymmetry"]["visible_patches"] == 32 and report["asymmetry"]["masking"].startswith("BlockMasking")
    assert "heads" not in report and "invariance" not in report


@pytest.mark.parametrize(
    "override, message",
    [
        ("analysis.sinks.event=2", "analysis.sinks.event"),
        ("analysis.parts=[heads,all]", "analysis.parts"),
        ("encoder.test_time_registers=-1", "encoder.test_time_registers"),
        ("analysis.asymmetry.mask_ratio=1.5", "analysis.asymmetry.mask_ratio"),
    ],
)
def test_bad_diagnostic_settings_are_one_config_error(compose_cfg, fmnist_root, override, message):
    cfg = compose_cfg("analyze", ["ckpt=random", f"dataset.root={fmnist_root}", *TINY, override])
    with pytest.raises(ConfigError, match=message):
        run(cfg)
