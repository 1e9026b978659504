"""timm ViTs beyond MAE's layout load through the one path: registers whose position entries cover the patches only
(no_embed_class, DINOv2 with registers) and LayerScale (ls1 / ls2 gammas). The encoder computes what timm computes,
also at another image size (the position embedding resampled once at load, as timm's dynamic_img_size does at every
forward), and semmae-analyze counts the registers among the prefix tokens. Weights are timm's own random
initialisation written to a local file; nothing is downloaded."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from semmae.analysis.capture import capture
from semmae.models.export import export_encoder, timm_kwargs
from semmae.models.loading import load_encoder
from semmae.models.weights import infer_geometry

NAME = "vit_small_patch14_reg4_dinov2"
PREFIX = 1 + 4  # CLS + 4 registers
SIZE = 56  # 4x4 patches of 14 px: small enough for a CPU test


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    """timm's DINOv2-with-registers ViT-S/14 (518 px, 37x37 patches) with non-trivial LayerScale gammas, learned-looking
    position, CLS and register embeddings, saved as a local safetensors file."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, num_classes=0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name in ("pos_embed", "cls_token", "reg_token"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("dinov2") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_the_timm_name_and_file_give_timms_model_bit_for_bit(dinov2):
    model, path = dinov2
    enc = load_encoder(f"timm:{NAME}", weights_file=path).eval()
    c = enc.config
    assert (c["reg_tokens"], c["no_embed_class"], enc.num_prefix_tokens, enc.num_pos_prefix) == (4, True, PREFIX, 0)
    assert c["init_values"] and enc.blocks[0].ls1.gamma.shape == (384,)
    assert enc.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in model.state_dict().items())


def test_at_a_small_image_size_the_encoder_computes_what_timm_computes(dinov2):
    model, path = dinov2
    enc = load_encoder(f"timm:{NAME}", weights_file=path, img_size=SIZE).eval()
    assert enc.pos_embed.shape == (1, 16, 384) and enc.grid_size == (4, 4)
    dynamic = timm.create_model(NAME, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    dynamic.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = enc.forward_features(x), dynamic.forward_features(x)
        assert ours.shape == (2, PREFIX + 16, 384)
        assert (ours - theirs).abs().max() <= 1e-5
        # the visible-token path: the prefix tokens carry no position, the kept patches theirs
        keep = torch.tensor([[3, 0, 15, 7]] * 2)
        visible = enc.forward_visible(x, keep)
        every = enc.forward_visible(x, torch.arange(16).expand(2, 16))
    assert torch.allclose(every, ours, atol=1e-6)
    assert visible.shape == (2, PREFIX + 4, 384)
    cap = capture(enc, x)
    assert cap.num_prefix_tokens == PREFIX and cap.num_reg_tokens == 4
    assert all(a.shape == (2, 6, PREFIX + 16, PREFIX + 16) for a in cap.attn)


def test_a_bare_state_dict_of_that_layout_is_recognised_and_exports_back_to_timm(dinov2, tmp_path):
    model, _ = dinov2
    config, guessed = infer_geometry(model.state_dict(), "bare")
    assert config["no_embed_class"] and config["init_values"] and config["reg_tokens"] == 4
    assert config["img_size"] == 518 and config["num_heads"] == 6 and guessed == ("num_heads",)
    torch.save({"model": model.state_dict()}, tmp_path / "bare.pth")
    enc = load_encoder(tmp_path / "bare.pth", img_size=SIZE).eval()
    out = export_encoder(enc, tmp_path / "encoder.pth")
    record = torch.load(out, weights_only=True)["semmae"]
    assert record["timm_kwargs"]["no_embed_class"] and record["timm_kwargs"]["init_values"]
    rebuilt = timm.create_model("vit_base_patch16_224", **timm_kwargs(enc)).eval()
    rebuilt.load_state_dict(torch.load(out, weights_only=True)["model"])  # strict: every key fits
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (rebuilt.forward_features(x) - enc.forward_features(x)).abs().max() <= 1e-5
    again = load_encoder(out).eval()  # and back: the record and the weights agree on the layout
    assert again.config["no_embed_class"] and again.num_prefix_tokens == PREFIX
    assert torch.equal(again.forward_features(x), enc.forward_features(x))


def test_semmae_analyze_counts_the_registers_as_prefix(dinov2, compose_cfg, fmnist_root, tmp_path):
    from semmae.cli.analyze import run as analyze

    _, path = dinov2
    cfg = compose_cfg(
        "analyze",
        [
            f"ckpt=timm:{NAME}",
            f"ckpt_file={path}",
            f"+encoder.img_size={SIZE}",
            f"dataset.root={fmnist_root}",
            "num_images=4",
            "batch_size=4",
            "figure_images=2",
        ],
        tmp_path / "analyze",
    )
    metrics = analyze(cfg)
    report = json.loads((tmp_path / "analyze" / "artifacts.json").read_text())
    assert report["num_images"] == 4 and report["grid_size"] == [4, 4] and len(report["blocks"]) == 12
    assert 0.0 < metrics["attn/block_01/prefix_share"] < 1.0  # CLS and the registers, against 16 patches
