"""The fine-tuning task on a fixture dataset, composed from the real configs; its augmentation set-up."""

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from semmae.cli.finetune import run
from semmae.data.finetune_augment import BatchRandomErasing, FinetuneAugment
from semmae.errors import ConfigError
from semmae.models.loading import load_encoder
from semmae.tasks.finetune import build_mixup

TINY = [
    "backbone.embed_dim=32",
    "backbone.depth=2",
    "backbone.num_heads=2",
    "backbone.decoder_embed_dim=16",
    "backbone.decoder_depth=1",
    "backbone.decoder_num_heads=2",
    "dataset.batch_size=32",
    "dataset.eval_batch_size=128",
]


def test_fast_dev_run(compose_cfg, fmnist_root):
    paper = ["model.mixup.mixup_alpha=0.8", "model.mixup.cutmix_alpha=1.0", "augment.re_prob=0.25"]  # its code paths
    cfg = compose_cfg("finetune", ["debug=fast_dev_run", f"dataset.root={fmnist_root}", "ckpt=null", *TINY, *paper])
    metrics = run(cfg)
    assert 0.0 <= metrics["test/top1"] <= metrics["test/top5"] <= 1.0
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert "random erasing" in results["augmentation"] and results["encoder_checkpoint"] == "random initialisation"


def test_model_has_maes_fine_tuning_head(compose_cfg, fmnist_root):
    cfg = compose_cfg("finetune", [f"dataset.root={fmnist_root}", "ckpt=null", *TINY, "model.head_init_std=2e-5"])
    model = instantiate(cfg.model)
    enc = model.encoder
    assert enc.global_pool == "avg" and isinstance(enc.norm, torch.nn.Identity)
    assert enc.fc_norm.normalized_shape == (32,) and enc.head.out_features == 10
    assert enc.head.weight.abs().max() < 1e-3  # MAE's near-zero head initialisation
    assert enc.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


def test_best_checkpoint_reloads_as_a_fine_tuned_encoder(compose_cfg, fmnist_root, tmp_path):
    cfg = compose_cfg(
        "finetune",
        [
            f"dataset.root={fmnist_root}",
            "ckpt=null",
            *TINY,
            "logger=none",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
        ],
    )
    run(cfg)
    best = next((tmp_path / "run" / "checkpoints").glob("best_epoch*.ckpt"))
    enc = load_encoder(best).eval()  # the fine-tuned model, head included, for analysis
    assert enc.global_pool == "avg" and enc.num_classes == 10
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert torch.equal(enc.head.weight, ckpt["state_dict"]["encoder.head.weight"])


def test_resident_data_gets_random_erasing_after_crop_and_flip(compose_cfg, fmnist_root):
    cfg = compose_cfg("finetune", [f"dataset.root={fmnist_root}", *TINY])
    dm = instantiate(cfg.dataset)
    what = FinetuneAugment(re_prob=1.0).apply(dm)
    assert isinstance(dm.train_augment, BatchRandomErasing) and "random erasing" in what
    dm.setup()
    images = dm.data["train"][0][:8]
    torch.manual_seed(0)
    erased = dm.train_augment(images)
    torch.manual_seed(0)
    plain = dm.train_augment.augment(images)
    assert erased.shape == plain.shape == (8, 1, 32, 32)
    assert not torch.equal(erased, plain)  # p = 1: every image has a patch of noise


def test_imagefolder_data_gets_timm_randaugment(tmp_path):
    from semmae.data.imagefolder import ImageFolderDataModule

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 90, 20, 200)).save(tmp_path / split / cls / f"{i}.png")
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=32, batch_size=2, num_workers=0)
    what = FinetuneAugment(re_prob=0.25).apply(dm)  # the paper recipe: random erasing on
    ops = repr(dm.datasets["train"].transform)
    assert "RandAugment" in ops and "RandomErasing" in ops and "rand-m9" in what
    assert dm.datasets["train"][0]["image"].shape == (3, 32, 32) and "image_plain" not in dm.datasets["train"][0]


def test_mixup_needs_an_even_batch():
    assert build_mixup({"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, 10, 33) is None
    with pytest.raises(ConfigError, match="even batch"):
        build_mixup({"mixup_alpha": 0.8}, 10, 33)
    mix = build_mixup({"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1}, 10, 4)
    _, targets = mix(torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert targets.shape == (4, 10) and torch.allclose(targets.sum(1), torch.ones(4))
