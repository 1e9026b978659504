"""The segmenter: which blocks feed the pyramid, the pyramid's shapes, inference at any size, sliding windows,
layer-wise lr decay groups."""

import pytest
import torch
from torch import nn

from semmae.errors import ConfigError
from semmae.models.encoder import ViTEncoder
from semmae.models.segmenter import Segmenter, evenly_spaced_blocks, slide_inference, sliding_windows
from semmae.optim.layer_decay import layer_decay_groups
from semmae.tasks.segment import pixel_cross_entropy


def make(img_size=32, patch_size=4, dim=32, depth=6, in_chans=1, num_classes=5, **kwargs):
    torch.manual_seed(0)
    enc = ViTEncoder(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=dim, depth=depth, num_heads=2
    )
    kwargs.setdefault("channels", 16)
    kwargs.setdefault("aux_channels", 8)
    return Segmenter(enc, num_classes, **kwargs)


def test_evenly_spaced_blocks():
    assert evenly_spaced_blocks(12) == [4, 6, 8, 12]
    assert evenly_spaced_blocks(6) == [2, 3, 4, 6]
    assert evenly_spaced_blocks(24) == [8, 12, 16, 24]


@pytest.mark.parametrize("img_size,patch_size,strides", [(64, 16, (4, 8, 16, 32)), (32, 4, (1, 2, 4, 8))])
def test_pyramid_shapes(img_size, patch_size, strides):
    seg = make(img_size=img_size, patch_size=patch_size, depth=12, in_chans=3)
    assert seg.out_blocks == [4, 6, 8, 12]
    x = torch.randn(2, 3, img_size, img_size)
    levels = seg.pyramid(x)
    assert [tuple(f.shape) for f in levels] == [(2, 32, img_size // s, img_size // s) for s in strides]
    out = seg(x)
    assert out["out"].shape == (2, 5, img_size // strides[0], img_size // strides[0])
    assert out["aux"].shape == (2, 5, img_size // strides[2], img_size // strides[2])
    seg.eval()
    assert seg(x)["aux"] is None  # the auxiliary head only trains
    assert seg.predict(x).shape == (2, 5, img_size, img_size)


def test_block_features_are_the_tapped_blocks_outputs():
    """The pyramid's inputs are what timm's forward_intermediates gives for the same (0-based) blocks."""
    seg = make(depth=6).eval()
    x = torch.randn(2, 1, 32, 32)
    ours = seg.block_features(x)
    ref = seg.encoder.forward_intermediates(x, indices=[b - 1 for b in seg.out_blocks], intermediates_only=True)
    assert len(ours) == 4
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-5)


def reference_block_features(seg: Segmenter, images: torch.Tensor) -> list[torch.Tensor]:
    """The token loop the segmenter used before it called timm's forward_intermediates (kept here as the reference)."""
    from timm.layers import resample_abs_pos_embed

    enc = seg.encoder
    ph, pw = seg.patch_size
    b, _, height, width = images.shape
    grid = (height // ph, width // pw)
    x = enc.patch_embed.norm(enc.patch_embed.proj(images).flatten(2).transpose(1, 2))
    pos = enc.pos_embed
    if grid != tuple(enc.grid_size):
        pos = resample_abs_pos_embed(pos, list(grid), old_size=list(enc.grid_size), num_prefix_tokens=1)
    cls = (enc.cls_token + pos[:, :1]).expand(b, -1, -1)
    x = enc.norm_pre(enc.pos_drop(torch.cat([cls, x + pos[:, 1:]], dim=1)))
    taps = {}
    for i, block in enumerate(enc.blocks[: seg.out_blocks[-1]]):
        x = block(x)
        if i + 1 in seg.out_blocks:
            taps[i + 1] = x[:, 1:].transpose(1, 2).reshape(b, -1, *grid)
    return [taps[n] for n in seg.out_blocks]


@pytest.mark.parametrize(
    "out_blocks,size",
    [("auto", (32, 32)), ("auto", (48, 64)), ([1, 1, 2, 2], (32, 32))],
    ids=["native-grid", "resampled-grid", "repeated-blocks"],
)
def test_forward_intermediates_give_the_old_token_loops_features(out_blocks, size):
    """timm's forward_intermediates (the segmenter's path) equals the hand-written loop it replaced: at the encoder's
    own grid, at another grid (position embeddings resampled), and with one block feeding several levels; and the
    blocks after the last tapped one do not run."""
    seg = make(depth=6, out_blocks=out_blocks).eval()
    x = torch.randn(2, 1, *size)
    ran = []
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, blk in enumerate(seg.encoder.blocks)]
    with torch.no_grad():
        ours = seg.block_features(x)
    for h in hooks:
        h.remove()
    assert max(ran) == seg.out_blocks[-1] - 1  # stopped early
    with torch.no_grad():
        ref = reference_block_features(seg, x)
    assert len(ours) == len(ref) == 4
    for a, b in zip(ours, ref):
        assert a.shape == b.shape == (2, 32, size[0] // 4, size[1] // 4)
        assert torch.equal(a, b)  # the same operations on the same values: bit for bit
    # and the encoder still runs the way MAE pretraining and the probes run it
    seg.encoder.forward_features(torch.randn(1, 1, 32, 32))


def test_any_input_size_is_predicted_at_its_own_size():
    seg = make().eval()
    with torch.no_grad():
        assert seg.predict(torch.randn(1, 1, 30, 45)).shape == (1, 5, 30, 45)
        assert seg.predict(torch.randn(1, 1, 48, 64)).shape == (1, 5, 48, 64)  # grid 12x16: embeddings resampled


def test_sliding_windows_cover_and_end_flush():
    assert sliding_windows(40, 16, 10) == [0, 10, 20, 24]
    assert sliding_windows(32, 32, 21) == [0]
    assert sliding_windows(20, 32, 21) == [0]
    assert sliding_windows(33, 32, 32) == [0, 1]


def test_slide_equals_whole_when_the_window_covers_the_image():
    seg = make().eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        whole = seg.predict(x)
        for window in (32, 48):
            assert torch.equal(slide_inference(seg.predict, x, window, 21, 5), whole)


def test_slide_averages_overlapping_windows_back_to_the_whole_image_for_a_pixelwise_model():
    torch.manual_seed(0)
    pixelwise = nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        slid = slide_inference(pixelwise, x, (16, 12), (10, 7), 4)
        assert torch.allclose(slid, pixelwise(x), atol=1e-5)
        # a model that sees its window (here: adds the window's mean) differs, so stitching really happened
        windowed = slide_inference(lambda c: pixelwise(c) + c.mean(), x, 16, 10, 4)
        assert not torch.allclose(windowed, pixelwise(x) + x.mean(), atol=1e-3)


def test_layer_decay_groups():
    seg = make(depth=6)
    groups = layer_decay_groups(seg, weight_decay=0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n, p in seg.named_parameters() if any(p is q for q in g["params"])}
    decay = {
        n: g["weight_decay"] for g in groups for n, p in seg.named_parameters() if any(p is q for q in g["params"])
    }
    assert scale["encoder.blocks.5.attn.qkv.weight"] == pytest.approx(0.5)
    assert scale["encoder.blocks.0.attn.qkv.weight"] == pytest.approx(0.5**6)
    assert scale["encoder.patch_embed.proj.weight"] == pytest.approx(0.5**7)
    assert scale["encoder.cls_token"] == pytest.approx(0.5**7)
    assert scale["decode_head.classifier.weight"] == 1.0 and scale["neck.0.0.weight"] == 1.0
    assert decay["encoder.cls_token"] == 0.0 and decay["encoder.blocks.0.norm1.weight"] == 0.0
    assert decay["encoder.blocks.0.mlp.fc1.weight"] == 0.05
    assert "encoder.pos_embed" not in scale and "encoder.norm.weight" not in scale  # frozen / not on the path


def test_every_trainable_parameter_gets_a_gradient():
    """Parameters off the path (final norm, blocks after the last tapped one) are frozen, so DDP needs no
    find_unused_parameters."""
    seg = make(depth=6, out_blocks=[1, 2, 3, 5]).train()
    out = seg(torch.randn(2, 1, 32, 32))
    (out["out"].sum() + out["aux"].sum()).backward()
    missing = [n for n, p in seg.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert not any(p.requires_grad for p in seg.encoder.blocks[5].parameters())


def test_a_few_steps_fit_a_batch():
    """Squares whose brightness is their class on a dark background: the loss must fall fast, or gradients or
    parameter groups are broken."""
    torch.manual_seed(0)
    labels = torch.zeros(8, 32, 32, dtype=torch.long)
    for i in range(8):
        y, x = torch.randint(0, 16, (2,)).tolist()
        labels[i, y : y + 16, x : x + 16] = 1 + i % 4
    images = (labels[:, None].float() / 4 - 0.5) + 0.05 * torch.randn(8, 1, 32, 32)
    labels[0, :2, :2] = 255  # some ignored pixels
    seg = make(num_classes=5).train()
    groups = layer_decay_groups(seg, weight_decay=0.05, layer_decay=0.75)
    for g in groups:
        g["lr"] = 3e-3 * g["lr_scale"]
    opt = torch.optim.AdamW(groups)
    losses = []
    for _ in range(15):
        out = seg(images)
        loss = pixel_cross_entropy(out["out"], labels, 255)[0] + 0.4 * pixel_cross_entropy(out["aux"], labels, 255)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_cross_entropy_ignores_unlabelled_pixels():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.full((1, 4, 4), 255)
    loss, n = pixel_cross_entropy(logits, target, 255)
    assert n == 0 and loss.item() == 0.0  # not NaN
    target[0, 0, 0] = 2
    loss, n = pixel_cross_entropy(logits, target, 255)
    assert n == 1 and loss.item() == pytest.approx(-torch.log_softmax(logits[0, :, 0, 0], 0)[2].item(), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(out_blocks=[2, 4, 6]), "same length"),
        (dict(out_blocks=[2, 4, 6, 7]), "1..6"),
        (dict(out_blocks=[2, 4, 3, 6]), "non-decreasing"),
        (dict(rescales=[4, 2, 1, 0.3]), "power of two"),
        (dict(rescales=[4, 2, 1, 0]), "power of two"),
        (dict(aux_level=4), "aux_level"),
    ],
)
def test_bad_configuration_is_a_config_error(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        make(**kwargs)
