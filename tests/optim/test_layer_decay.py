"""Layer-wise lr decay groups for a depth-12 ViT: the layers and scales of MAE / BEiT fine-tuning."""

import pytest

from semmae.models.encoder import ViTEncoder
from semmae.optim.layer_decay import layer_decay_groups


@pytest.fixture(scope="module")
def vit12():
    return ViTEncoder(
        img_size=32, patch_size=8, embed_dim=24, depth=12, num_heads=2, num_classes=10, global_pool="avg", fc_norm=True
    )


def test_depth_12_gives_14_layers_with_decay_and_no_decay_groups(vit12):
    groups = layer_decay_groups(vit12, weight_decay=0.05, layer_decay=0.65)
    # layers 0 (embeddings) .. 13 (fc_norm + head), each split into decay / no-decay: 28 groups
    assert len(groups) == 28
    scales = sorted({round(g["lr_scale"], 12) for g in groups})
    assert scales == sorted(round(0.65 ** (13 - layer), 12) for layer in range(14))


def test_each_parameter_sits_at_its_layer(vit12):
    groups = layer_decay_groups(vit12, weight_decay=0.05, layer_decay=0.65)
    scale_of = {}
    wd_of = {}
    for g in groups:
        for p in g["params"]:
            scale_of[id(p)], wd_of[id(p)] = g["lr_scale"], g["weight_decay"]
    named = dict(vit12.named_parameters())
    assert scale_of[id(named["patch_embed.proj.weight"])] == pytest.approx(0.65**13)
    assert scale_of[id(named["cls_token"])] == pytest.approx(0.65**13)
    for i in range(12):
        assert scale_of[id(named[f"blocks.{i}.attn.qkv.weight"])] == pytest.approx(0.65 ** (12 - i))
    assert scale_of[id(named["fc_norm.weight"])] == 1.0 and scale_of[id(named["head.weight"])] == 1.0
    # no weight decay on 1-D parameters and on the CLS token; the frozen position embedding is not optimised
    assert wd_of[id(named["blocks.3.mlp.fc1.weight"])] == 0.05
    assert wd_of[id(named["blocks.3.mlp.fc1.bias"])] == 0.0 and wd_of[id(named["cls_token"])] == 0.0
    assert id(named["pos_embed"]) not in scale_of
    assert len(scale_of) == sum(p.requires_grad for p in vit12.parameters())


def test_each_layer_scales_the_lr_by_decay_to_its_distance_from_the_top(vit12):
    groups = layer_decay_groups(vit12, 0.05, 0.5)
    assert sorted({g["lr_scale"] for g in groups}) == sorted(0.5 ** (13 - layer) for layer in range(14))
