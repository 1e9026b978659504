"""The evaluation configs compose with every option, and the ImageNet presets state the official recipes with a
total batch that stays fixed whatever the device count."""

import pytest

from semmae.config import config_dir

PRESETS = {
    "pretrain": ("mae_vit_base_in1k_pretrain", 4096, 800),
    "linprobe": ("mae_vit_base_in1k_linprobe", 16384, 90),
    "finetune": ("mae_vit_base_in1k_finetune", 1024, 100),
}


@pytest.mark.parametrize("task", ["linprobe", "finetune"])
@pytest.mark.parametrize("group", ["backbone", "dataset", "trainer", "logger", "debug"])
def test_every_option_composes(compose_cfg, task, group):
    for option in sorted(p.stem for p in (config_dir() / group).glob("*.yaml")):
        if group == "trainer" and option == "default":
            continue
        cfg = compose_cfg(task, [f"{group}={option}"])
        assert cfg.model.encoder.img_size == cfg.backbone.img_size, (group, option)


@pytest.mark.parametrize("task", list(PRESETS))
@pytest.mark.parametrize("devices,nodes", [(8, 1), (4, 1), (8, 4)])
def test_presets_keep_the_total_batch(compose_cfg, task, devices, nodes):
    preset, total, epochs = PRESETS[task]
    ckpt = [] if task == "pretrain" else ["ckpt=/weights/mae_pretrain_vit_base.pth"]
    cfg = compose_cfg(task, [f"experiment={preset}", f"trainer.devices={devices}", f"trainer.num_nodes={nodes}", *ckpt])
    per_device, accum = cfg.dataset.batch_size, cfg.trainer.accumulate_grad_batches
    assert per_device * accum * devices * nodes == total
    assert per_device <= cfg.batch.max_per_device
    assert cfg.trainer.max_epochs == epochs and cfg.backbone.name == "vit_base" and cfg.dataset.name == "imagenet"


def test_presets_state_the_official_numbers(compose_cfg):
    ft = compose_cfg("finetune", ["experiment=mae_vit_base_in1k_finetune", "ckpt=x.pth"]).model
    assert (ft.optim.blr, ft.optim.layer_decay, ft.optim.weight_decay, ft.encoder.drop_path_rate) == (
        5e-4,
        0.65,
        0.05,
        0.1,
    )
    assert (ft.mixup.mixup_alpha, ft.mixup.cutmix_alpha, ft.mixup.label_smoothing) == (0.8, 1.0, 0.1)
    lp = compose_cfg("linprobe", ["experiment=mae_vit_base_in1k_linprobe", "ckpt=x.pth"])
    assert (lp.model.optim.blr, lp.model.optim.weight_decay, lp.model.feature_cache) == (0.1, 0.0, False)
    assert lp.dataset.train_subset is None and lp.dataset.val_subset is None
    pt = compose_cfg("pretrain", ["experiment=mae_vit_base_in1k_pretrain"]).model
    assert (pt.optim.blr, pt.optim.warmup_epochs, pt.mae.norm_pix_loss, tuple(pt.optim.betas)) == (
        1.5e-4,
        40,
        True,
        (0.9, 0.95),
    )


def test_export_config_composes(compose_cfg):
    cfg = compose_cfg("export", ["ckpt=a.ckpt", "out=b.pth", "encoder.img_size=64"])
    assert (cfg.ckpt, cfg.out, cfg.encoder.img_size, cfg.encoder.in_chans) == ("a.ckpt", "b.pth", 64, None)
