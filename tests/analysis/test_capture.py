"""Attention capture: the probabilities it returns are the block's softmax(q k^T * scale), the model's outputs do
not change, and everything it touched (attention path, hooks, train/eval state, RNG) is as it was afterwards."""

import pytest
import torch
from torch import nn

from semmae.analysis import capture, find_encoder
from semmae.errors import ConfigError
from semmae.models.encoder import ViTEncoder


def small_encoder(**kw) -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=3, num_heads=4, **kw)


def manual_attention(encoder: ViTEncoder, images: torch.Tensor) -> list[torch.Tensor]:
    """softmax(q k^T * scale) per block, recomputed from each block's attention input (norm1 output)."""
    inputs = []
    handles = [blk.norm1.register_forward_hook(lambda m, i, o: inputs.append(o.detach())) for blk in encoder.blocks]
    with torch.no_grad():
        encoder.eval()
        encoder.forward_features(images)
    for h in handles:
        h.remove()
    out = []
    for blk, x in zip(encoder.blocks, inputs):
        attn = blk.attn
        b, t, _ = x.shape
        q, k, _ = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        out.append(((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1))
    return out


@pytest.mark.parametrize("qk_norm", [False, True])
def test_captured_attention_equals_manual_recomputation(qk_norm):
    enc = small_encoder(qk_norm=qk_norm)
    x = torch.randn(2, 1, 16, 16)
    cap = capture(enc, x)
    expected = manual_attention(enc, x)
    assert len(cap.attn) == 3 and cap.num_prefix_tokens == 1
    for got, want in zip(cap.attn, expected):
        assert got.shape == (2, 4, 17, 17)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.sum(-1), torch.ones(2, 4, 17))


def test_capture_leaves_outputs_unchanged_and_tokens_are_block_outputs():
    enc = small_encoder().eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        before = enc.forward_features(x)
    cap = capture(enc, x)
    with torch.no_grad():
        after = enc.forward_features(x)
        final = enc.norm(cap.tokens[-1])
    assert torch.equal(before, after)  # same fused path as before the capture
    torch.testing.assert_close(cap.output, before, atol=1e-5, rtol=1e-5)  # explicit vs fused: rounding only
    torch.testing.assert_close(final, cap.output)
    assert cap.tokens[0].shape == (3, 17, 32)


def test_capture_restores_flags_modes_hooks_and_draws_no_random_numbers():
    enc = small_encoder(drop_path_rate=0.2, attn_drop_rate=0.1)
    enc.train()
    enc.blocks[1].mlp.eval()  # a mixed state (e.g. a frozen part) must come back exactly
    enc.blocks[2].attn.fused_attn = False
    modes = {name: m.training for name, m in enc.named_modules()}
    x = torch.randn(2, 1, 16, 16)
    rng = torch.get_rng_state()
    cap = capture(enc, x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {name: m.training for name, m in enc.named_modules()} == modes
    assert [blk.attn.fused_attn for blk in enc.blocks] == [True, True, False]
    assert all(not m._forward_hooks for m in enc.modules())
    # eval mode during capture: no attention dropout, rows are proper distributions
    torch.testing.assert_close(cap.attn[0].sum(-1), torch.ones(2, 4, 17))


def test_training_forward_keeps_the_fused_path():
    enc = small_encoder()
    calls = []
    enc.blocks[0].attn.attn_drop.register_forward_hook(lambda *a: calls.append(1))
    enc.forward_features(torch.randn(1, 1, 16, 16))
    assert calls == []  # fused SDPA never runs attn_drop as a module
    capture(enc, torch.randn(1, 1, 16, 16))
    assert calls == [1]


class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = small_encoder()
        self.head = nn.Linear(32, 10)


class Pretrain(nn.Module):
    def __init__(self):
        super().__init__()
        self.mae = nn.Module()
        self.mae.encoder = small_encoder()


class Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Identity(), small_encoder())


def test_find_encoder_rule():
    probe, pre, seg = Probe(), Pretrain(), Segmenter()
    assert find_encoder(probe) is probe.encoder
    assert find_encoder(pre) is pre.mae.encoder
    assert find_encoder(seg) is seg.backbone[1]
    assert find_encoder(probe.encoder) is probe.encoder
    with pytest.raises(ConfigError, match="no ViT encoder"):
        find_encoder(nn.Linear(2, 2))
