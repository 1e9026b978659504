"""The segmentation task end to end on the Fashion-MNIST fixture, composed from the real configs."""

import json
from pathlib import Path

import pytest
import torch

from semmae.cli.segment import run
from semmae.errors import ConfigError
from semmae.models.mae import MaskedAutoencoder

GEOMETRY = dict(img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=4, num_heads=2)


def write_pretrain_checkpoint(path: Path, seed: int = 0, **geometry) -> MaskedAutoencoder:
    """A file laid out as semmae's pretraining checkpoints are (Lightning state dict + "semmae" metadata)."""
    torch.manual_seed(seed)
    mae = MaskedAutoencoder(**{**GEOMETRY, **geometry}, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {f"mae.{k}": v for k, v in mae.state_dict().items()},
            "semmae": {"kind": "pretrain", "model": dict(mae.config)},
        },
        path,
    )
    return mae


TINY = [
    "backbone.embed_dim=32",
    "backbone.depth=4",
    "backbone.num_heads=2",
    "model.segmenter.channels=8",
    "model.segmenter.aux_channels=8",
    "dataset.batch_size=16",
    "dataset.eval_batch_size=64",
]


def test_fast_dev_run_from_a_random_encoder(compose_cfg, fmnist_root):
    cfg = compose_cfg("segment", ["debug=fast_dev_run", f"dataset.root={fmnist_root}", "ckpt=null", *TINY])
    metrics = run(cfg)
    assert 0.0 <= metrics["test/mIoU"] <= 1.0 and 0.0 <= metrics["test/aAcc"] <= 1.0
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["encoder"] == "random initialisation"
    assert [r["class"] for r in results["per_class"]][:2] == ["background", "T-shirt/top"]
    assert len(results["per_class"]) == 11


def test_latest_pretraining_checkpoint_sliding_window_and_figures(compose_cfg, fmnist_root, tmp_path):
    ckpt = tmp_path / "outputs/pretrain/run/checkpoints/last.ckpt"
    mae = write_pretrain_checkpoint(ckpt)  # embed_dim 32, depth 4, 2 heads, 32 px / patch 4, 1 channel
    cfg = compose_cfg(
        "segment",
        [
            f"dataset.root={fmnist_root}",
            f"paths.root_dir={tmp_path}",
            *TINY,
            "logger=csv",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "dataset.val_subset=64",
            "callbacks.segmentation_figure.num_images=2",
            "model.inference.mode=slide",
            "model.inference.window=24",
            "model.inference.stride=8",
        ],
    )
    metrics = run(cfg)
    out = Path(cfg.paths.output_dir)
    assert "test/mIoU" in metrics and "val/mIoU" in metrics
    assert (out / "figures" / "segmentation_epoch000.png").is_file()
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["semmae"]["kind"] == "segment" and saved["semmae"]["encoder_source"] == str(ckpt)
    # frozen parts of the encoder (position embeddings) are still the pretrained ones after training
    assert torch.equal(saved["state_dict"]["segmenter.encoder.pos_embed"], mae.encoder.pos_embed)
    # layer-wise lr decay reached the optimiser: every group's initial lr is the peak lr times its scale
    groups = saved["optimizer_states"][0]["param_groups"]
    assert {round(g["initial_lr"] / g["lr_scale"], 9) for g in groups} == {cfg.model.optim.lr}
    assert min(g["lr_scale"] for g in groups) == pytest.approx(cfg.model.optim.layer_decay**5)  # embeddings, depth 4
    results = json.loads((out / "results.json").read_text())
    assert results["encoder"] == str(ckpt) and results["metrics"]["test/mIoU"] == pytest.approx(metrics["test/mIoU"])


def test_a_dataset_without_label_maps_is_refused(compose_cfg, fmnist_root):
    cfg = compose_cfg("segment", ["dataset=fashion_mnist", f"dataset.root={fmnist_root}", "ckpt=null", *TINY])
    with pytest.raises(ConfigError, match="fashion_mnist_seg"):
        run(cfg)
