"""The linear-probe task on a fixture dataset, composed from the real configs."""

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from semmae.cli.linprobe import run
from semmae.data.feature_cache import FeatureDataModule

TINY = [
    "backbone.embed_dim=32",
    "backbone.depth=2",
    "backbone.num_heads=2",
    "backbone.decoder_embed_dim=16",
    "backbone.decoder_depth=1",
    "backbone.decoder_num_heads=2",
    "dataset.batch_size=64",
    "dataset.eval_batch_size=128",
]


@pytest.mark.parametrize("cache", ["true", "false"])
def test_fast_dev_run(compose_cfg, fmnist_root, cache):
    cfg = compose_cfg(
        "linprobe",
        ["debug=fast_dev_run", f"dataset.root={fmnist_root}", "ckpt=null", f"model.feature_cache={cache}", *TINY],
    )
    metrics = run(cfg)
    assert 0.0 <= metrics["test/top1"] <= metrics["test/top5"] <= 1.0
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["encoder_checkpoint"] == "random initialisation"
    assert results["feature_cache"] is (cache == "true") and results["config"]["ckpt"] is None


def test_cached_features_are_the_encoders_features_of_the_plain_images(compose_cfg, fmnist_root):
    cfg = compose_cfg("linprobe", [f"dataset.root={fmnist_root}", "ckpt=null", "model.bf16=false", *TINY])
    datamodule, model = instantiate(cfg.dataset), instantiate(cfg.model)
    cached = FeatureDataModule.from_images(datamodule, model.encode, torch.device("cpu"))
    images, labels = datamodule.data["val"]
    feats, cached_labels = cached.splits["val"]
    assert feats.shape == (len(labels), 32) and torch.equal(cached_labels, labels)
    direct = model.encode(datamodule.eval_transform(images[:5]))
    assert torch.allclose(feats[:5], direct, atol=1e-5)
    batch = next(iter(cached.train_dataloader()))
    assert batch["feature"].shape == (64, 32) and "image" not in batch


def test_probe_learns_on_cached_features(compose_cfg, fmnist_root):
    """The fixture's classes are separable from the pixels: a probe on random features must beat chance by far."""
    cfg = compose_cfg(
        "linprobe",
        [
            f"dataset.root={fmnist_root}",
            "ckpt=null",
            *TINY,
            "logger=none",
            "callbacks=none",
            "trainer.max_epochs=8",
            "model.optim.blr=25.6",
            "model.optim.warmup_epochs=1",
        ],
    )
    metrics = run(cfg)
    assert metrics["test/top1"] > 0.5, metrics


def test_encoder_stays_frozen(compose_cfg, fmnist_root):
    cfg = compose_cfg("linprobe", [f"dataset.root={fmnist_root}", "ckpt=null", *TINY])
    model = instantiate(cfg.model)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert not model.encoder.training and model.head.training
