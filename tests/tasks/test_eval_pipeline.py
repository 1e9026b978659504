"""Pretrain -> linear probe -> fine-tune, end to end on a small subset of the real Fashion-MNIST, through the
checkpoint each step writes."""

import json
from pathlib import Path

import pytest
import torch

from semmae.cli.finetune import run as finetune
from semmae.cli.linprobe import run as linprobe
from semmae.cli.pretrain import run as pretrain

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not any(FMNIST.glob("train-images-idx3-ubyte*")),
    reason="the real Fashion-MNIST (Debian dataset-fashion-mnist) is not installed",
)

COMMON = [
    "backbone.embed_dim=32",
    "backbone.depth=2",
    "backbone.num_heads=2",
    "backbone.decoder_embed_dim=16",
    "backbone.decoder_depth=1",
    "backbone.decoder_num_heads=2",
    f"dataset.root={FMNIST}",
    "dataset.train_subset=2048",
    "dataset.val_subset=1000",
    "dataset.batch_size=128",
    "dataset.eval_batch_size=500",
    "logger=none",
]


def test_pretrain_linprobe_finetune(compose_cfg, tmp_path):
    pretrain(compose_cfg("pretrain", [*COMMON, "trainer.max_epochs=1", "~callbacks.reconstruction"], tmp_path / "pre"))
    ckpt = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    lp_cfg = compose_cfg(
        "linprobe",
        [*COMMON, f"ckpt={ckpt}", "trainer.max_epochs=5", "model.optim.blr=12.8", "model.optim.warmup_epochs=1"],
        tmp_path / "lp",
    )
    lp = linprobe(lp_cfg)
    assert lp["test/top1"] > 0.25, lp  # 10 classes: chance is 0.1 (a 16-step pretraining gives ~0.35 here)
    results = json.loads((tmp_path / "lp" / "results.json").read_text())
    assert results["encoder_checkpoint"] == str(ckpt) and results["feature_cache"] is True
    best = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=True)
    pretrained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(
        best["state_dict"]["encoder.blocks.1.mlp.fc2.weight"], pretrained["mae.encoder.blocks.1.mlp.fc2.weight"]
    )  # the probe read the pretrained encoder

    # 48 steps of a width-32 ViT: the recipe's regularisers (Mixup, erasing, small crops, near-zero head, layer decay)
    # are tested in test_finetune.py; here they would hold accuracy near chance for this short a run
    light = [
        "trainer.max_epochs=3",
        "model.optim.blr=4e-3",
        "model.optim.warmup_epochs=0",
        "model.optim.layer_decay=1.0",
        "model.head_init_std=null",
        "model.mixup.mixup_alpha=0",
        "augment.re_prob=0",
        "dataset.crop_scale=[0.8,1]",
        "model.encoder.drop_path_rate=0",
    ]
    ft = finetune(compose_cfg("finetune", [*COMMON, f"ckpt={ckpt}", *light], tmp_path / "ft"))
    assert ft["test/top1"] > 0.2, ft  # chance 0.1; ~0.3 here
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["encoder_checkpoint"] == str(ckpt)
