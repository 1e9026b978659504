"""Gated attention as a training-time control (backbone.attn_gate=true): a head-wise sigmoid gate on each head's
attention output, on the fused path and the capture path alike; it trains, checkpoints and reloads from every source
that records or holds it; timm's ViT has no gate, so export says so."""

import pytest
import torch
from hydra.utils import instantiate

from semmae.analysis.capture import capture
from semmae.cli.pretrain import run as pretrain
from semmae.masking.base import keep_lowest
from semmae.models.encoder import ViTEncoder
from semmae.models.gated_attention import GATE_BIAS, GatedAttention
from semmae.models.mae import MaskedAutoencoder

TINY = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def gated_encoder(seed: int = 0, **kwargs) -> ViTEncoder:
    torch.manual_seed(seed)
    return MaskedAutoencoder(**TINY, attn_gate=True, **kwargs).encoder.eval()


def set_gate(encoder: ViTEncoder, weight: float | None = None, bias: torch.Tensor | float | None = None) -> None:
    """weight: 0 -> zero weights; s > 0 -> seeded N(0, s^2) weights (a constant would see only the token's mean,
    which the LayerNorm before the attention makes zero)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for blk in encoder.blocks:
            if weight is not None:
                w = blk.attn.gate.weight
                w.copy_(torch.randn(w.shape, generator=g) * weight)
            if bias is not None:
                blk.attn.gate.bias.copy_(torch.as_tensor(bias, dtype=torch.float32).expand_as(blk.attn.gate.bias))


def test_every_block_is_gated_and_the_gate_starts_half_open_without_drawing_random_numbers():
    torch.manual_seed(0)
    plain = MaskedAutoencoder(**TINY)
    gated = MaskedAutoencoder(**TINY, attn_gate=True)
    torch.manual_seed(0)
    gated = MaskedAutoencoder(**TINY, attn_gate=True)
    assert all(isinstance(blk.attn, GatedAttention) for blk in gated.encoder.blocks)
    assert not any(isinstance(m, GatedAttention) for m in plain.modules())
    assert not any(isinstance(m, GatedAttention) for m in gated.decoder.modules())  # the encoder's control only
    extra = set(gated.state_dict()) - set(plain.state_dict())
    assert extra == {f"encoder.blocks.{i}.attn.gate.{p}" for i in range(2) for p in ("weight", "bias")}
    # the same seed gives the same weights everywhere else: the two arms of the control start from one point
    assert all(torch.equal(v, gated.state_dict()[k]) for k, v in plain.state_dict().items())
    gate = gated.encoder.blocks[0].attn.gate
    assert gate.weight.shape == (2, 32) and not gate.weight.any() and torch.all(gate.bias == GATE_BIAS)
    # every query and head starts at 0.5, the sigmoid's steepest point (a gate saturated open would barely learn)
    assert torch.equal(gate(torch.randn(3, 5, 32)), torch.full((3, 5, 2), 0.5))
    assert gated.config["attn_gate"] is True and gated.encoder.config["attn_gate"] is True
    assert plain.encoder.config["attn_gate"] is False


def test_a_fully_open_gate_is_the_ungated_encoder_and_a_closed_head_writes_nothing():
    gated = gated_encoder()
    plain = ViTEncoder(img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2).eval()
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if ".gate." not in k})
    x = images()
    set_gate(gated, weight=0.0, bias=1e4)  # sigmoid = 1: no gate at all
    assert torch.allclose(gated.forward_features(x), plain.forward_features(x), atol=1e-6)
    # head 1 closed (sigmoid = 0) equals the ungated encoder whose head-1 values are zero: the gate acts per head
    set_gate(gated, weight=0.0, bias=torch.tensor([1e4, -1e4]))
    with torch.no_grad():
        for blk in plain.blocks:
            d, hd = 32, 16
            blk.attn.qkv.weight[2 * d + hd : 3 * d].zero_()
            blk.attn.qkv.bias[2 * d + hd : 3 * d].zero_()
    assert torch.allclose(gated.forward_features(x), plain.forward_features(x), atol=1e-6)


def test_the_gate_is_computed_per_query_from_the_blocks_normed_input():
    enc = gated_encoder()
    x = images()
    set_gate(enc, weight=0.0, bias=GATE_BIAS)
    before = enc.forward_features(x)
    set_gate(enc, weight=0.3)  # now the gate depends on each token's normed input
    after = enc.forward_features(x)
    assert not torch.allclose(before, after, atol=1e-3)
    attn, seen = enc.blocks[0].attn, {}
    hook = attn.gate.register_forward_hook(lambda _m, args, out: seen.update(inp=args[0], out=out))
    try:
        enc.forward_features(x)
    finally:
        hook.remove()
    assert seen["out"].shape == (3, 65, 2)  # one value per query token and head
    assert torch.allclose(seen["out"], torch.sigmoid(seen["inp"] @ attn.gate.weight.T + attn.gate.bias))


def test_the_fused_path_and_the_capture_path_agree_and_capture_reads_the_probabilities():
    enc = gated_encoder()
    set_gate(enc, weight=0.2)
    x = images()
    fused = enc.forward_features(x)
    cap = capture(enc, x)
    assert all(blk.attn.fused_attn for blk in enc.blocks)  # capture restores the training path
    assert torch.allclose(cap.output, fused, atol=1e-5)
    assert all(a.shape == (3, 2, 65, 65) for a in cap.attn)
    assert torch.allclose(cap.attn[0].sum(-1), torch.ones(3, 2, 65), atol=1e-5)


def test_the_gate_learns_in_the_masked_autoencoder():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(**TINY, attn_gate=True, reg_tokens=2)
    x = images()
    mask = keep_lowest(torch.rand(3, 64, generator=torch.Generator().manual_seed(0)), 16)
    loss, _ = mae(x, mask)
    loss.backward()
    gate = mae.encoder.blocks[0].attn.gate
    assert torch.isfinite(loss) and gate.weight.grad.abs().sum() > 0 and gate.bias.grad.abs().sum() > 0


def test_attn_gate_must_be_a_switch():
    from semmae.errors import ConfigError

    with pytest.raises(ConfigError, match="attn_gate"):
        ViTEncoder(embed_dim=32, depth=1, num_heads=2, attn_gate="yes")


# --- through pretraining, checkpoints, evaluation and export -----------------------------------------------------
PRETRAIN = [
    "backbone.embed_dim=32",
    "backbone.depth=2",
    "backbone.num_heads=2",
    "backbone.decoder_embed_dim=16",
    "backbone.decoder_depth=1",
    "backbone.decoder_num_heads=2",
    "backbone.attn_gate=true",
    "dataset.batch_size=32",
    "dataset.eval_batch_size=64",
    "logger=none",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "callbacks.reconstruction.num_images=2",
]


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory, fmnist_root):
    from tests.conftest import compose

    out = tmp_path_factory.mktemp("gated_pretrain")
    cfg = compose("pretrain", [f"dataset.root={fmnist_root}", "seed=3", *PRETRAIN], out)
    metrics = pretrain(cfg)
    return out, metrics


def test_a_seeded_gated_pretraining_run_trains_and_records_the_gate(gated_run):
    out, metrics = gated_run
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["semmae"]["model"]["attn_gate"] is True and ckpt["global_step"] == 3
    gate = ckpt["state_dict"]["mae.encoder.blocks.0.attn.gate.bias"]
    assert gate.shape == (2,) and not torch.equal(gate, torch.full((2,), GATE_BIAS))  # it moved: it trained


def test_linprobe_rebuilds_the_gated_encoder_bit_identically(gated_run, compose_cfg, fmnist_root, tmp_path):
    out, _ = gated_run
    ckpt_path = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    cfg = compose_cfg(
        "linprobe",
        [
            f"ckpt={ckpt_path}",
            f"dataset.root={fmnist_root}",
            "backbone.embed_dim=32",
            "backbone.depth=2",
            "backbone.num_heads=2",
        ],
    )
    encoder = instantiate(cfg.model.encoder).eval()
    assert encoder.config["attn_gate"] is True and isinstance(encoder.blocks[1].attn, GatedAttention)
    saved = {k[len("mae.encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("mae.encoder.")}
    assert encoder.state_dict().keys() == saved.keys()
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in saved.items())
    reference = ViTEncoder(
        img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, attn_gate=True
    ).eval()
    reference.load_state_dict(saved)
    x = images()
    assert torch.equal(encoder.forward_features(x), reference.forward_features(x))


def test_a_gated_export_loads_back_in_semmae_and_says_timm_has_no_gate(tmp_path):
    from semmae.errors import CheckpointError
    from semmae.models.export import NO_TIMM_GATE, export_encoder, export_hf, timm_kwargs, timm_load_line
    from semmae.models.loading import load_encoder

    enc = gated_encoder()
    set_gate(enc, weight=0.2)
    x = images()
    for name in ("encoder.pth", "encoder.safetensors"):
        out = export_encoder(enc, tmp_path / name)
        back = load_encoder(out).eval()
        assert back.config["attn_gate"] is True and torch.equal(back.forward_features(x), enc.forward_features(x))
    assert timm_load_line(enc, tmp_path / "encoder.pth") == NO_TIMM_GATE and "\n" not in NO_TIMM_GATE
    with pytest.raises(CheckpointError, match="no attention gate"):
        timm_kwargs(enc)
    assert torch.load(tmp_path / "encoder.pth", weights_only=True)["semmae"]["timm_kwargs"] is None
    with pytest.raises(CheckpointError, match="gated attention"):
        export_hf(enc, tmp_path / "hf")


def test_a_bare_gated_state_dict_gives_its_gate_and_its_heads():
    from semmae.models.loading import random_encoder
    from semmae.models.weights import infer_geometry

    enc = gated_encoder()
    config, guessed = infer_geometry(enc.state_dict(), "bare")
    assert config["attn_gate"] is True and config["num_heads"] == 2 and guessed == ()  # width 32: from the gate's rows
    backbone = dict(img_size=32, patch_size=4, in_chans=1, **TINY, attn_gate=True)
    fresh = random_encoder(backbone, seed=0)  # ckpt=null with backbone.attn_gate=true
    assert fresh.config["attn_gate"] and isinstance(fresh.blocks[0].attn, GatedAttention)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_a_record_whose_heads_contradict_the_gate_is_refused(tmp_path):
    from semmae.errors import CheckpointError
    from semmae.models.loading import load_encoder

    enc = gated_encoder()
    torch.save(
        {"semmae": {"kind": "encoder", "model": {**enc.config, "num_heads": 4}}, "model": enc.state_dict()},
        tmp_path / "altered.pth",
    )
    with pytest.raises(CheckpointError, match="num_heads=4 .its attention gate: 2."):
        load_encoder(tmp_path / "altered.pth")
