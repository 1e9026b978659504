"""The attention callback's diagnostics at its defaults (head sinks and CLS statistics): their scalars in the run's
metrics, the sink-class figure, the heads as a W&B table; the heavier diagnostics are refused with one line."""

import json
from pathlib import Path

import pytest

from semmae.callbacks.attention_maps import AttentionMapCallback
from semmae.cli.pretrain import run
from semmae.errors import ConfigError
from tests.callbacks.test_attention_maps import TINY


def test_the_callback_logs_the_attention_only_diagnostics(compose_cfg, fmnist_root):
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
    for key in ("attn/block_01/nop_heads", "attn/block_03/cls_cls", "attn/shallow_patches_cls", "attn/nop_heads"):
        assert key in metrics, key
    assert not any(k.startswith("asym/") or "si_count" in k or "outlier" in k for k in metrics)
    assert (out / "figures" / "sink_classes_epoch000.png").is_file()
    assert "## Head sinks" in (out / "figures" / "artifacts_epoch000.md").read_text()
    files = next((out / "wandb").glob("offline-run-*")) / "files"
    tables = list((files / "media" / "table" / "attention").glob("heads_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["block", "head", "class"] and len(table["data"]) == 3 * 2  # blocks x heads


def test_heavier_parts_are_refused_and_none_is_allowed():
    with pytest.raises(ConfigError, match="semmae-analyze"):
        AttentionMapCallback(parts=["heads", "invariance"])
    assert AttentionMapCallback(parts=[]).diagnostics.parts == ()
    assert AttentionMapCallback(sinks={"event": 0.8}).diagnostics.sinks.event == 0.8
