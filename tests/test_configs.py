"""Every option of every config group composes with the task configs, and the objects it names can be built."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from semmae.config import config_dir

CONF = config_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_exist():
    for group in ("masking", "backbone", "dataset", "trainer", "logger", "callbacks", "experiment", "debug"):
        assert options(group), group
    assert {"vit_micro", "vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge"} <= set(options("backbone"))
    assert {"fashion_mnist", "cifar10", "cifar100", "imagenet"} <= set(options("dataset"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"wandb", "csv", "none"} <= set(options("logger"))


@pytest.mark.parametrize(
    "group", ["masking", "backbone", "dataset", "trainer", "logger", "callbacks", "experiment", "debug"]
)
def test_every_option_composes(compose_cfg, group):
    for option in options(group):
        if group == "trainer" and option == "default":
            continue
        cfg = compose_cfg("pretrain", [f"{group}={option}"])
        assert cfg.model.mae.img_size % cfg.model.mae.patch_size == 0, (group, option)


def test_vit_micro_is_the_specified_size(compose_cfg):
    cfg = compose_cfg("pretrain", [])
    b = cfg.backbone
    assert (b.embed_dim, b.depth, b.num_heads, b.img_size, b.patch_size) == (128, 6, 4, 32, 4)
    assert cfg.masking.mask_ratio == 0.75 and cfg.dataset.name == "fashion_mnist"


@pytest.mark.parametrize("backbone,dim,depth", [("vit_micro", 128, 6), ("vit_tiny", 192, 12), ("vit_small", 384, 12)])
def test_backbones_instantiate(compose_cfg, backbone, dim, depth):
    cfg = compose_cfg("pretrain", [f"backbone={backbone}"])
    mae = instantiate(cfg.model.mae)
    assert mae.encoder.embed_dim == dim and len(mae.encoder.blocks) == depth
    x = torch.randn(1, cfg.dataset.channels, cfg.backbone.img_size, cfg.backbone.img_size)
    from semmae.masking import RandomMasking

    loss, _ = mae(x, RandomMasking(0.75)(x, mae.grid_size))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("backbone,params_m", [("vit_base", 86), ("vit_large", 304), ("vit_huge", 632)])
def test_large_backbones_have_the_published_encoder_size(compose_cfg, backbone, params_m):
    cfg = compose_cfg("pretrain", [f"backbone={backbone}", "dataset.channels=3"])
    b = cfg.backbone
    d, depth, p = b.embed_dim, b.depth, b.patch_size
    n = (b.img_size // p) ** 2
    per_block = 12 * d * d + 13 * d  # qkv + proj + mlp (ratio 4) weights and biases, two norms
    total = depth * per_block + 3 * p * p * d + d + (n + 1) * d + d + 2 * d
    assert abs(total / 1e6 - params_m) / params_m < 0.02


def test_trainer_and_callbacks_instantiate(compose_cfg, tmp_path):
    from semmae.cli.run_steps import instantiate_group

    cfg = compose_cfg("pretrain", ["logger=csv"])
    callbacks = instantiate_group(cfg.callbacks)
    names = {type(c).__name__ for c in callbacks}
    assert {"ModelCheckpoint", "ReconstructionFigure"} <= names
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.logger))
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert Path(trainer.default_root_dir) == Path(cfg.paths.output_dir)


def test_run_dirs_under_outputs_and_multirun(compose_cfg):
    cfg = compose_cfg("pretrain", [])
    assert cfg.hydra.run.dir.startswith("outputs/")
    assert cfg.hydra.sweep.dir.startswith("multirun/")


@pytest.mark.parametrize("dataset", ["fashion_mnist_seg", "ade20k"])
def test_segment_composes_with_the_segmentation_datasets(compose_cfg, dataset):
    cfg = compose_cfg("segment", [f"dataset={dataset}"])
    assert cfg.model.num_classes == cfg.model.segmenter.num_classes == {"fashion_mnist_seg": 11, "ade20k": 150}[dataset]
    assert cfg.model.segmenter.encoder.in_chans == cfg.dataset.channels


def test_ade20k_vit_base_preset(compose_cfg):
    cfg = compose_cfg("segment", ["experiment=ade20k_vit_base_upernet"])
    assert cfg.dataset.name == "ade20k" and cfg.dataset.crop_size == 512 and cfg.dataset.batch_size == 16
    assert (cfg.backbone.embed_dim, cfg.backbone.depth, cfg.backbone.patch_size) == (768, 12, 16)
    assert cfg.trainer.max_steps == 160000 and cfg.model.optim.layer_decay == 0.65
    assert cfg.model.inference.mode == "slide" and cfg.model.segmenter.channels == 768
