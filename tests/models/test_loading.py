"""Every checkpoint source loads through one path into an encoder with the same outputs as the weights it holds;
exported encoders round-trip through timm; what does not fit is named."""

import argparse
import os
import time

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from semmae.errors import CheckpointError
from semmae.models.encoder import ViTEncoder
from semmae.models.export import export_encoder, timm_kwargs, timm_load_line
from semmae.models.loading import build_encoder, load_encoder, random_encoder
from semmae.models.mae import MaskedAutoencoder
from semmae.models.sources import find_latest

TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def same(a, b):
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def write_pretrain_ckpt(path, mae):
    torch.save(
        {
            "semmae": {"kind": "pretrain", "model": mae.config},
            "state_dict": {f"mae.{k}": v for k, v in mae.state_dict().items()},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return MaskedAutoencoder(**TINY).eval()


def test_pretraining_checkpoint_loads_into_an_identical_encoder(tmp_path, mae):
    enc = load_encoder(write_pretrain_ckpt(tmp_path / "a.ckpt", mae)).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(enc.forward_features(x), mae.encoder.forward_features(x), atol=1e-6)


# --- official MAE checkpoints ---------------------------------------------------------------------------------------
def official_mae_checkpoint(encoder: ViTEncoder) -> dict:
    """The layout of facebookresearch/mae's mae_pretrain_vit_*.pth / checkpoint-N.pth: MAE names under "model",
    decoder weights and the mask token beside the encoder's, training state around it."""
    d = encoder.embed_dim
    model = {k: v.clone() for k, v in encoder.state_dict().items()}
    model.update(
        {
            "mask_token": torch.randn(1, 1, 16),
            "decoder_pos_embed": torch.randn(1, encoder.num_patches + 1, 16),
            "decoder_embed.weight": torch.randn(16, d),
            "decoder_embed.bias": torch.randn(16),
            "decoder_blocks.0.norm1.weight": torch.randn(16),
            "decoder_norm.weight": torch.randn(16),
            "decoder_pred.weight": torch.randn(3 * 16, 16),
            "decoder_pred.bias": torch.randn(3 * 16),
        }
    )
    return {
        "model": model,
        "optimizer": {"state": {}},
        "epoch": 799,
        "scaler": {},
        "args": argparse.Namespace(model="mae_vit_tiny_patch4", norm_pix_loss=True),
    }


@pytest.fixture(scope="module")
def rgb_reference():
    """A width-192 (ViT-Ti width: 3 heads by the standard table) RGB encoder with random, non-trivial weights."""
    torch.manual_seed(1)
    enc = ViTEncoder(img_size=32, patch_size=4, in_chans=3, embed_dim=192, depth=2, num_heads=3).eval()
    with torch.no_grad():
        enc.pos_embed.normal_(0, 0.1)  # a learned-looking embedding, so that resampling is visible
    return enc


def test_official_mae_checkpoint_gives_the_outputs_of_its_weights(tmp_path, rgb_reference):
    torch.save(official_mae_checkpoint(rgb_reference), tmp_path / "mae_pretrain.pth")
    enc = load_encoder(tmp_path / "mae_pretrain.pth").eval()
    assert (enc.embed_dim, len(enc.blocks), enc.blocks[0].attn.num_heads, enc.grid_size) == (192, 2, 3, (8, 8))
    x = torch.randn(2, 3, 32, 32)
    assert same(enc.forward_features(x), rgb_reference.forward_features(x))


def test_official_mae_checkpoint_at_another_image_size_resamples_the_position_embedding(tmp_path, rgb_reference):
    torch.save(official_mae_checkpoint(rgb_reference), tmp_path / "mae_pretrain.pth")
    enc = load_encoder(tmp_path / "mae_pretrain.pth", img_size=48).eval()
    expected = resample_abs_pos_embed(
        rgb_reference.pos_embed.detach(), new_size=[12, 12], old_size=[8, 8], num_prefix_tokens=1
    )
    assert enc.grid_size == (12, 12) and torch.allclose(enc.pos_embed, expected)
    assert torch.equal(enc.pos_embed[:, 0], rgb_reference.pos_embed[:, 0])  # the CLS entry is kept as it is
    assert enc.forward_features(torch.randn(1, 3, 48, 48)).shape == (1, 145, 192)


def test_rgb_weights_on_grey_images_equal_replicating_the_channel(tmp_path, rgb_reference):
    torch.save(official_mae_checkpoint(rgb_reference), tmp_path / "mae_pretrain.pth")
    grey = load_encoder(tmp_path / "mae_pretrain.pth", in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    assert same(grey.forward_features(x), rgb_reference.forward_features(x.expand(-1, 3, -1, -1)))


# --- export and timm --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_exported_encoder_round_trips_through_timm(tmp_path, mae, suffix):
    enc = load_encoder(write_pretrain_ckpt(tmp_path / "a.ckpt", mae)).eval()
    out = export_encoder(enc, tmp_path / f"encoder{suffix}", "a.ckpt")
    model = timm.create_model("vit_base_patch16_224", **timm_kwargs(enc)).eval()
    if suffix == ".pth":
        model.load_state_dict(torch.load(out)["model"])  # the documented line, strict
    else:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(out))
    x = torch.randn(3, 1, 32, 32)
    assert same(model.forward_features(x), enc.forward_features(x))
    assert same(model(x), enc(x))
    again = load_encoder(out).eval()  # and back into semmae, geometry from the file's record
    assert same(again.forward_features(x), enc.forward_features(x))
    assert "timm.create_model(" in timm_load_line(enc, out) and str(out) in timm_load_line(enc, out)


def test_exported_fine_tuned_encoder_keeps_its_head_in_timm(tmp_path, mae):
    enc = load_encoder(
        write_pretrain_ckpt(tmp_path / "a.ckpt", mae), num_classes=10, global_pool="avg", fc_norm=True
    ).eval()
    torch.nn.init.normal_(enc.head.weight)
    out = export_encoder(enc, tmp_path / "ft.pth")
    model = timm.create_model("vit_base_patch16_224", **timm_kwargs(enc)).eval()
    model.load_state_dict(torch.load(out)["model"])
    x = torch.randn(2, 1, 32, 32)
    assert same(model(x), enc(x)) and model(x).shape == (2, 10)


def test_timm_model_name_with_a_local_weights_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=0).eval()
    weights = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(weights, str(tmp_path / "model.safetensors"))
    enc = load_encoder("timm:vit_tiny_patch16_224", weights_file=tmp_path / "model.safetensors").eval()
    # the same weights in the same architecture (ViTEncoder computes as timm's ViT: see the export round trip)
    assert (enc.embed_dim, len(enc.blocks), enc.blocks[0].attn.num_heads, enc.grid_size) == (192, 12, 3, (14, 14))
    assert enc.state_dict().keys() == weights.keys()
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in weights.items())
    small = load_encoder("timm:vit_tiny_patch16_224", weights_file=tmp_path / "model.safetensors", img_size=64)
    assert small.grid_size == (4, 4)
    with pytest.raises(CheckpointError, match="ckpt_file=PATH"):
        load_encoder("timm:vit_tiny_patch16_224")
    with pytest.raises(CheckpointError, match="registers"):
        load_encoder("timm:vit_base_patch16_reg4_gap_256", weights_file=tmp_path / "model.safetensors")


# --- random initialisation and 'latest' ----------------------------------------------------------------------------
def test_random_encoder_is_the_encoder_pretraining_starts_from():
    backbone = dict(
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=4.0,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    torch.manual_seed(3)
    enc = random_encoder(backbone, in_chans=1, num_classes=5, global_pool="avg", fc_norm=True)
    torch.manual_seed(3)
    fresh = MaskedAutoencoder(**{k: v for k, v in backbone.items()}).encoder
    for k, v in fresh.state_dict().items():
        if not k.startswith("norm."):  # the global-pool encoder has fc_norm instead of the final norm
            assert torch.equal(enc.state_dict()[k], v), k
    assert enc.head.out_features == 5


def test_latest_is_the_newest_pretraining_checkpoint(tmp_path, mae):
    with pytest.raises(CheckpointError, match="make pretrain"):
        find_latest(tmp_path)
    for i, run in enumerate(["2026-01-01_10-00-00", "2026-01-02_10-00-00"]):
        ckpt = tmp_path / "outputs" / "pretrain" / run / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        write_pretrain_ckpt(ckpt, mae)
        os.utime(ckpt, (time.time() + i, time.time() + i))
    assert find_latest(tmp_path).parent.parent.name == "2026-01-02_10-00-00"
    assert build_encoder("latest", root=str(tmp_path)).embed_dim == 32
    with pytest.warns(UserWarning, match="embed_dim 768 vs 32"):  # e.g. backbone=vit_base with a micro checkpoint
        build_encoder("latest", root=str(tmp_path), backbone={"embed_dim": 768, "depth": 2, "patch_size": 4})


# --- errors, by name -------------------------------------------------------------------------------------------------
def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_encoder(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}, "epoch": 3}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not an encoder checkpoint"):
        load_encoder(tmp_path / "other.ckpt")
    torch.save({"semmae": {"kind": "pretrain", "model": {}}, "state_dict": {"x": torch.zeros(1)}}, tmp_path / "e.ckpt")
    with pytest.raises(CheckpointError, match="no encoder weights"):
        load_encoder(tmp_path / "e.ckpt")


def test_a_setting_the_checkpoint_contradicts_is_named(tmp_path, mae):
    path = write_pretrain_ckpt(tmp_path / "a.ckpt", mae)
    with pytest.raises(CheckpointError, match="embed_dim=32, not 64"):
        load_encoder(path, embed_dim=64)
    with pytest.raises(CheckpointError, match="num_heads=2, not 4"):
        load_encoder(path, num_heads=4)


def test_missing_and_misshapen_weights_are_listed_by_name(tmp_path, mae):
    state = {k: v.clone() for k, v in mae.encoder.state_dict().items()}
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.0.attn.qkv.weight"] = torch.zeros(96, 16)
    state["blocks.0.attn.q_norm.weight"] = torch.ones(16)  # qk-norm: semmae's encoder has none
    torch.save({"semmae": {"kind": "encoder", "model": mae.encoder.config}, "model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_encoder(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "blocks.0.attn.qkv.weight [96, 16] vs [96, 32]" in msg
    assert "missing: blocks.1.mlp.fc2.bias" in msg and "unexpected: blocks.0.attn.q_norm.weight" in msg


def test_a_foreign_width_needs_its_head_count(tmp_path):
    enc = ViTEncoder(img_size=32, patch_size=4, in_chans=1, embed_dim=40, depth=1, num_heads=5)
    torch.save({"model": enc.state_dict()}, tmp_path / "w40.pth")
    with pytest.raises(CheckpointError, match="num_heads"):
        load_encoder(tmp_path / "w40.pth")
    assert load_encoder(tmp_path / "w40.pth", num_heads=5).blocks[0].attn.num_heads == 5


def test_the_backbone_supplies_the_head_count_of_its_width(tmp_path):
    """A width-128 official-format file has no head count; backbone=vit_micro (width 128, 4 heads) gives it."""
    from semmae.models.loading import build_encoder

    mae = MaskedAutoencoder(
        img_size=32,
        patch_size=4,
        in_chans=1,
        embed_dim=128,
        depth=2,
        num_heads=4,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    path = tmp_path / "official.pth"
    torch.save({"model": mae.state_dict()}, path)
    backbone = {"img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 2, "num_heads": 4}
    encoder = build_encoder(str(path), backbone=backbone)
    assert encoder.config["num_heads"] == 4
    with pytest.raises(CheckpointError, match="num_heads"):  # a backbone of another width says nothing about it
        build_encoder(str(path), backbone={**backbone, "embed_dim": 192, "num_heads": 3})


def test_random_is_an_alias_of_null_and_latest_takes_any_pattern(tmp_path, mae):
    from semmae.models.sources import resolve_source

    backbone = dict(
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=4.0,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    assert [resolve_source(s) for s in (None, "random", "Random", "null")] == [None] * 4
    a, b = (build_encoder(s, backbone=backbone, seed=7, in_chans=1) for s in (None, "random"))
    assert a.source is None and b.source is None
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    ckpt = tmp_path / "outputs" / "segment" / "r" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    write_pretrain_ckpt(ckpt, mae)
    with pytest.raises(CheckpointError, match="no pretraining checkpoint"):  # the default: pretraining runs
        find_latest(tmp_path)
    assert find_latest(tmp_path, "outputs/*/*/checkpoints/last.ckpt") == ckpt
    assert resolve_source("latest", tmp_path, "outputs/segment/*/checkpoints/last.ckpt") == str(ckpt)


def test_non_finite_weights_are_refused_naming_a_tensor(tmp_path, mae):
    broken = MaskedAutoencoder(**TINY)
    broken.load_state_dict(mae.state_dict())
    with torch.no_grad():
        broken.encoder.blocks[1].mlp.fc1.weight[0, 0] = float("nan")
    path = write_pretrain_ckpt(tmp_path / "nan.ckpt", broken)
    with pytest.raises(
        CheckpointError, match=r"nan.ckpt holds weights that are not finite \(blocks.1.mlp.fc1.weight has"
    ):
        load_encoder(path)


@pytest.mark.parametrize("key,value", [("depth", 100000), ("img_size", 32000), ("embed_dim", 4096), ("num_heads", 7)])
def test_a_record_that_does_not_describe_its_tensors_is_refused_before_building(tmp_path, mae, key, value):
    from safetensors.torch import load_file as read_tensors
    from safetensors.torch import save_file

    good = tmp_path / "enc.safetensors"
    export_encoder(mae.encoder, good)
    record = __import__("json").loads(__import__("safetensors").safe_open(str(good), "pt").metadata()["semmae"])
    record["model"][key] = value
    bad = tmp_path / "altered.safetensors"
    save_file(read_tensors(str(good)), str(bad), metadata={"semmae": __import__("json").dumps(record)})
    with pytest.raises(CheckpointError, match=rf"its semmae record does not describe its weights \({key}={value}"):
        load_encoder(bad)
