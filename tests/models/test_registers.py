"""Registers as a control (backbone.reg_tokens=N): timm's reg_token after CLS, seen by every encoder step, dropped
before the decoder; checkpoints, export and timm carry them; reg_tokens=0 changes nothing."""

import json
import os
import subprocess
import sys

import pytest
import timm
import torch

from semmae.analysis.capture import capture
from semmae.masking.base import keep_lowest
from semmae.models.encoder import ViTEncoder
from semmae.models.export import export_encoder, timm_kwargs, timm_load_line
from semmae.models.loading import load_encoder, random_encoder
from semmae.models.mae import MaskedAutoencoder, masked_patch_loss, patchify
from semmae.models.segmenter import Segmenter
from semmae.models.weights import infer_geometry
from tests.conftest import REPO

TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
REGS = 4


def random_mask(batch: int, num_patches: int, n_keep: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return keep_lowest(torch.rand(batch, num_patches, generator=g), n_keep)


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return MaskedAutoencoder(**TINY, reg_tokens=REGS).eval()


def write_pretrain_ckpt(path, mae):
    torch.save(
        {
            "semmae": {"kind": "pretrain", "model": dict(mae.config), "encoder_prefix": "mae.encoder."},
            "state_dict": {f"mae.{k}": v for k, v in mae.state_dict().items()},
        },
        path,
    )
    return path


def test_mae_with_registers_predicts_every_patch_and_scores_patches_only(mae):
    x, n = images(), mae.num_patches
    mask = random_mask(3, n, 16)
    seen = {}
    hook = mae.decoder.blocks[0].register_forward_pre_hook(lambda _m, args: seen.update(decoder=args[0].shape))
    try:
        loss, pred = mae(x, mask)
    finally:
        hook.remove()
    assert pred.shape == (3, n, 4 * 4 * 1)
    assert seen["decoder"] == (3, 1 + n, TINY["decoder_embed_dim"])  # CLS + patches: no registers in the decoder
    assert torch.allclose(loss, masked_patch_loss(pred, patchify(x, 4), mask.mask, True))
    assert mae.reconstruct(x, pred).shape == x.shape
    assert mae.encoder.num_prefix_tokens == 1 + REGS and mae.encoder.reg_token.shape == (1, REGS, 32)
    assert mae.encoder.pos_embed.shape == (1, 1 + REGS + n, 32)
    assert not mae.encoder.pos_embed[:, : 1 + REGS].any()  # prefix entries are zero, as CLS's


def test_registers_are_in_every_encoder_step_and_learn(mae):
    x, n = images(), mae.num_patches
    mask = random_mask(3, n, 16)
    shapes = []
    hooks = [
        blk.register_forward_pre_hook(lambda _m, args: shapes.append(args[0].shape) and None)
        for blk in mae.encoder.blocks
    ]
    try:
        latent = mae.encoder.forward_visible(x, mask.ids_keep)
        full = mae.encoder.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    depth = TINY["depth"]
    assert shapes[:depth] == [(3, 1 + REGS + 16, 32)] * depth  # visible tokens: CLS, registers, kept patches
    assert shapes[depth:] == [(3, 1 + REGS + n, 32)] * depth  # full images: CLS, registers, all patches
    assert latent.shape == (3, 1 + REGS + 16, 32) and full.shape == (3, 1 + REGS + n, 32)
    # the visible path is the full path restricted to the kept patches when every patch is kept
    everything = random_mask(3, n, n)
    restored = mae.encoder.forward_visible(x, everything.ids_keep)
    order = everything.ids_keep
    expect = torch.cat(
        [full[:, : 1 + REGS], torch.gather(full[:, 1 + REGS :], 1, order.unsqueeze(-1).expand(-1, -1, 32))], dim=1
    )
    assert torch.allclose(restored, expect, atol=1e-5)
    model = MaskedAutoencoder(**TINY, reg_tokens=REGS)
    loss, _ = model(x, mask)
    loss.backward()
    assert model.encoder.reg_token.grad is not None and model.encoder.reg_token.grad.abs().sum() > 0
    assert "encoder.reg_token" in model.no_weight_decay()


def test_reg_tokens_zero_is_bit_identical_to_no_argument():
    x = images()
    mask = random_mask(3, 64, 16)
    torch.manual_seed(3)
    plain = MaskedAutoencoder(**TINY)
    torch.manual_seed(3)
    zero = MaskedAutoencoder(**TINY, reg_tokens=0)
    assert plain.state_dict().keys() == zero.state_dict().keys()
    assert all(torch.equal(v, zero.state_dict()[k]) for k, v in plain.state_dict().items())
    for a, b in zip(plain(x, mask), zero(x, mask)):
        assert torch.equal(a, b)
    assert torch.equal(plain.encoder.forward_visible(x, mask.ids_keep), zero.encoder.forward_visible(x, mask.ids_keep))
    assert torch.equal(plain.encoder.forward_features(x), zero.encoder.forward_features(x))
    assert plain.encoder.num_prefix_tokens == 1 and plain.encoder.reg_token is None
    assert timm_kwargs(plain.encoder) == timm_kwargs(zero.encoder) and "reg_tokens" not in timm_kwargs(zero.encoder)
    geometry = dict(
        img_size=32,
        patch_size=4,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=4.0,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    a = random_encoder(geometry, seed=5)
    b = random_encoder({**geometry, "reg_tokens": 0}, seed=5)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    cap_a, cap_b = capture(a, x), capture(b, x)
    assert cap_a.num_prefix_tokens == cap_b.num_prefix_tokens == 1 and cap_b.num_reg_tokens == 0
    assert all(torch.equal(p, q) for p, q in zip(cap_a.attn, cap_b.attn))


def test_random_encoder_takes_reg_tokens_from_the_backbone():
    geometry = dict(
        img_size=32,
        patch_size=4,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=4.0,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        reg_tokens=REGS,
    )
    enc = random_encoder(geometry, seed=0)
    assert enc.num_reg_tokens == REGS and enc.config["reg_tokens"] == REGS
    assert enc.forward_features(images()).shape == (3, 1 + REGS + 64, 32)


def test_pretrain_checkpoint_with_registers_round_trips_through_export_and_load(mae, tmp_path):
    x = images()
    want = mae.encoder.forward_features(x)
    ckpt = write_pretrain_ckpt(tmp_path / "last.ckpt", mae)
    enc = load_encoder(ckpt).eval()
    assert enc.config["reg_tokens"] == REGS and enc.num_prefix_tokens == 1 + REGS
    assert torch.equal(enc.forward_features(x), want)
    for name in ("encoder.pth", "encoder.safetensors"):
        out = export_encoder(enc, tmp_path / name, source=str(ckpt))
        back = load_encoder(out).eval()
        assert back.config["reg_tokens"] == REGS
        assert torch.equal(back.forward_features(x), want)
    record = torch.load(tmp_path / "encoder.pth", weights_only=True)["semmae"]
    assert record["model"]["reg_tokens"] == REGS and record["timm_kwargs"]["reg_tokens"] == REGS
    # a bare state dict: the registers are inferred from reg_token's shape, pos_embed = CLS + registers + grid
    torch.save({f"module.{k}": v for k, v in mae.encoder.state_dict().items()}, tmp_path / "bare.pth")
    config, _ = infer_geometry(mae.encoder.state_dict(), "bare")
    assert config["reg_tokens"] == REGS and config["img_size"] == 32
    assert torch.equal(load_encoder(tmp_path / "bare.pth", num_heads=2).eval().forward_features(x), want)


def test_pos_embed_resampling_keeps_the_register_entries(mae, tmp_path):
    ckpt = write_pretrain_ckpt(tmp_path / "last.ckpt", mae)
    enc = load_encoder(ckpt, img_size=48)
    assert enc.pos_embed.shape == (1, 1 + REGS + 144, 32)
    assert torch.equal(enc.pos_embed[:, : 1 + REGS], mae.encoder.pos_embed[:, : 1 + REGS])
    assert torch.equal(enc.reg_token, mae.encoder.reg_token)
    assert enc.forward_features(torch.randn(2, 1, 48, 48)).shape == (2, 1 + REGS + 144, 32)


def test_timm_rebuilds_the_exported_encoder_with_the_printed_kwargs(mae, tmp_path):
    enc = load_encoder(write_pretrain_ckpt(tmp_path / "last.ckpt", mae)).eval()
    out = export_encoder(enc, tmp_path / "encoder.pth")
    line = timm_load_line(enc, out)
    assert f"reg_tokens={REGS}" in line
    model = timm.create_model("vit_base_patch16_224", **timm_kwargs(enc)).eval()
    model.load_state_dict(torch.load(out, weights_only=True)["model"])  # strict: every key fits
    x = images()
    assert model.num_reg_tokens == REGS
    assert torch.allclose(model.forward_features(x), enc.forward_features(x), atol=1e-5)


def test_capture_carries_the_prefix_tokens(mae):
    x = images(2)
    cap = capture(mae.encoder, x)
    t = 1 + REGS + mae.num_patches
    assert cap.num_prefix_tokens == 1 + REGS and cap.num_reg_tokens == REGS
    assert all(a.shape == (2, 2, t, t) for a in cap.attn) and cap.output.shape == (2, t, 32)
    assert cap.tokens[0][:, cap.patch_slice].shape == (2, mae.num_patches, 32)


def test_segmenter_strips_registers_from_its_features(mae):
    seg = Segmenter(load_encoder_from(mae), num_classes=3, out_blocks=[1, 1, 2, 2], channels=16, aux_channels=None)
    feats = seg.block_features(torch.randn(2, 1, 32, 32))
    assert [f.shape for f in feats] == [(2, 32, 8, 8)] * 4
    assert seg.eval().predict(torch.randn(1, 1, 40, 36)).shape == (1, 3, 40, 36)  # padded to the patch grid


def load_encoder_from(mae):
    enc = ViTEncoder(img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, reg_tokens=REGS)
    enc.load_state_dict(mae.encoder.state_dict())
    return enc


def test_cli_pretraining_with_registers_loads_in_analyze(fmnist_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    run_dir = tmp_path / "pretrain"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "semmae.pretrain",
            "backbone.reg_tokens=4",
            "logger=none",
            f"dataset.root={fmnist_root}",
            "dataset.train_subset=128",
            "dataset.val_subset=64",
            "dataset.batch_size=32",
            "+trainer.max_steps=2",
            "trainer.max_epochs=1",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 2  # (batch 256 > 128 images: no step)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    meta = torch.load(ckpt, map_location="cpu", weights_only=False)["semmae"]
    assert meta["model"]["reg_tokens"] == 4
    enc = load_encoder(ckpt)
    assert enc.num_reg_tokens == 4 and enc.num_prefix_tokens == 5
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "semmae.analyze",
            f"ckpt={ckpt}",
            "num_images=8",
            "batch_size=8",
            "figure_images=2",
            f"dataset.root={fmnist_root}",
            f"hydra.run.dir={tmp_path / 'analyze'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "analyze" / "artifacts.json").read_text())
    assert report["num_images"] == 8 and len(report["blocks"]) == enc.config["depth"]
