"""AttentionMapCallback inside real pretraining runs composed from the configs: what it writes (figures, metric
keys, W&B offline run, results.json), when it runs, and that it does not change training."""

import json
import shutil
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch

from semmae.cli.pretrain import run

TINY = [
    "backbone.embed_dim=32",
    "backbone.depth=3",
    "backbone.num_heads=2",
    "backbone.decoder_embed_dim=16",
    "backbone.decoder_depth=1",
    "backbone.decoder_num_heads=2",
    "dataset.batch_size=32",
    "dataset.eval_batch_size=64",
    "callbacks.attention_maps.num_images=16",
    "callbacks.attention_maps.figure_images=2",
]


class LossRecorder(L.Callback):
    """Added through the config; keeps every training loss and a checksum of the final weights."""

    last = None

    def __init__(self):
        self.losses: list[float] = []
        LossRecorder.last = self

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module):
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_wandb_offline_run_holds_figures_and_metric_keys(compose_cfg, fmnist_root, tmp_path):
    """A fast_dev_run-sized run (one training and one validation batch) with the W&B logger. Lightning's own
    fast_dev_run flag swaps every logger for a dummy, so the same size is set with limits instead."""
    import wandb

    cfg = compose_cfg(
        "pretrain",
        [
            f"dataset.root={fmnist_root}",
            "callbacks=attention_maps",
            "logger=wandb",
            *TINY,
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
        ],
    )
    metrics = run(cfg)
    wandb.finish()
    out = Path(cfg.paths.output_dir)
    for name in ("attention_blocks_epoch000.png", "cls_attention_epoch000.png", "artifacts_epoch000.md"):
        assert (out / "figures" / name).is_file(), name
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    images = {p.parent.name + "/" + p.name.split("_")[0] for p in (files / "media" / "images").rglob("*.png")}
    assert {"attention/received", "attention/cls"} <= images
    tables = list((files / "media" / "table" / "attention").glob("metrics_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:2] == ["block", "sink_ratio"] and [row[0] for row in table["data"]] == [1, 2, 3]
    # the run's final metrics (results.json, what the sweep report reads) hold the attn/* keys
    assert "attn/block_01/sink_ratio" in metrics and "attn/shallow_sink_ratio" in metrics
    saved = json.loads((out / "results.json").read_text())["metrics"]
    assert saved["attn/block_03/high_norm_fraction"] == metrics["attn/block_03/high_norm_fraction"]
    # the .wandb transaction log, read back with wandb's own reader where this wandb version has it
    wandb_cli = shutil.which("wandb") or str(Path(__import__("sys").executable).parent / "wandb")
    proc = subprocess.run(
        [wandb_cli, "leet", "inspect", "--summary", "--json", str(runs[0])], capture_output=True, text=True, timeout=120
    )
    if proc.returncode == 0:
        summary = json.loads(proc.stdout)["summary"]
        assert summary["attn/block_02/sink_ratio"] == pytest.approx(metrics["attn/block_02/sink_ratio"])
        assert summary["attn/shallow_artifact_fraction"] == metrics["attn/shallow_artifact_fraction"]
        assert summary["attention/received"]["_type"] == "images/separated"
    else:
        assert "No such command" in proc.stderr or "leet" in proc.stderr, proc.stderr


def test_same_seeded_run_with_and_without_the_callback_gives_identical_losses(compose_cfg, fmnist_root, tmp_path):
    # The per-image torchvision transforms in the main process (resident=false, no workers) draw from the global
    # torch RNG, so a callback that drew from it too would change the next epoch's crops and losses.
    common = [
        f"dataset.root={fmnist_root}",
        "dataset.resident=false",
        "dataset.num_workers=0",
        "logger=csv",
        *TINY[:8],
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        f"+callbacks.recorder._target_={__name__}.LossRecorder",
    ]
    run(compose_cfg("pretrain", [*common, "callbacks=none"], tmp_path / "without"))
    without = LossRecorder.last
    # with a series too: its start point reads the validation images through a DataLoader before any validation
    # (a DataLoader draws its base seed from the global RNG, which the callback restores), one more at step 1
    run(
        compose_cfg(
            "pretrain",
            [
                *common,
                "callbacks=attention_maps",
                "callbacks.attention_maps.every_n_epochs=2",
                "callbacks.attention_maps.num_images=16",
                "callbacks.attention_maps.figure_images=2",
                "callbacks.attention_maps.series_at=[1]",
            ],
            tmp_path / "with",
        )
    )
    with_cb = LossRecorder.last
    assert len(without.losses) == 6 and with_cb.losses == without.losses
    for k, v in without.weights.items():
        assert torch.equal(v, with_cb.weights[k]), k
    figures = tmp_path / "with" / "figures"
    # every 2 epochs (after epoch 1), and once more at the end of fit (after epoch 2)
    assert sorted(p.name for p in figures.glob("attention_blocks_*.png")) == [
        "attention_blocks_epoch001.png",
        "attention_blocks_final.png",
    ]
    import csv

    rows = list(csv.DictReader(open(next((tmp_path / "with" / "csv").rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("attn/shallow_sink_ratio")]
    assert [int(r["step"]) for r in logged] == [0, 1, 4, 6]  # series: 0 and 1; analyses: after epochs 1 and 2


def test_bad_settings_are_config_errors():
    from semmae.callbacks.attention_maps import AttentionMapCallback
    from semmae.errors import ConfigError

    with pytest.raises(ConfigError, match="every_n_epochs"):
        AttentionMapCallback(every_n_epochs=0)
    with pytest.raises(ConfigError, match="tau"):
        AttentionMapCallback(tau=0)


def test_fine_tuning_writes_the_artifact_series_to_results_json(compose_cfg, fmnist_root, tmp_path):
    """finetune_default's attention callback: shallow_* before the first step, at 25/50/75% of the steps
    (4 steps: steps 1, 2, 3) and at the end (step 4, the final analysis), into results.json."""
    from semmae.analysis.metrics import METRICS
    from semmae.cli.finetune import run as finetune

    tiny = [
        *TINY[:3],
        "dataset.batch_size=32",
        "dataset.eval_batch_size=64",
        "callbacks.attention_maps.num_images=16",
        "callbacks.attention_maps.figure_images=1",
    ]
    cfg = compose_cfg(
        "finetune",
        [
            f"dataset.root={fmnist_root}",
            "ckpt=null",
            *tiny,
            "logger=csv",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=1",
        ],
    )
    metrics = finetune(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    series = results["artifact_series"]
    assert [(e["at"], e["step"], e["epoch"]) for e in series] == [
        ("start", 0, 0),
        (0.25, 1, 0),
        (0.5, 2, 0),
        (0.75, 3, 0),
        ("end", 4, 1),
    ]  # end: epochs done
    for entry in series:
        assert {"at", "step", "epoch", *(f"shallow_{m}" for m in METRICS)} <= set(entry)
        assert {"shallow_cls_cls", "nop_heads"} <= set(entry)  # the callback's diagnostics along fine-tuning too
    # the end point is the run's final measurement; training changed the encoder between start and end
    assert series[-1]["shallow_norm_ratio"] == metrics["attn/shallow_norm_ratio"]
    assert series[0]["shallow_sink_ratio"] != series[-1]["shallow_sink_ratio"]
    import csv

    rows = list(csv.DictReader(open(next((Path(cfg.paths.output_dir) / "csv").rglob("metrics.csv")))))
    logged = sorted({int(r["step"]) for r in rows if r.get("attn/shallow_prefix_share")})
    assert logged == [0, 1, 2, 3, 4]


def test_series_at_is_checked():
    from semmae.callbacks.attention_maps import AttentionMapCallback
    from semmae.errors import ConfigError

    assert AttentionMapCallback().series_at is None
    assert AttentionMapCallback(series_at=[0.5, 100]).series_at == (0.5, 100)
    for bad in ([1.5], [-1], [0.0], ["half"], [True]):
        with pytest.raises(ConfigError, match="series_at"):
            AttentionMapCallback(series_at=bad)
