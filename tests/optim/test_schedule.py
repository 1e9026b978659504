import math

import pytest

from semmae.models.mae import MaskedAutoencoder
from semmae.optim import scaled_lr, warmup_cosine, weight_decay_groups


def test_lr_scaling_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert scaled_lr(1.5e-4, 256) == pytest.approx(1.5e-4)
    assert scaled_lr(1e-3, 64) == pytest.approx(2.5e-4)


def test_warmup_then_cosine_values():
    assert warmup_cosine(0, 10, 110) == 0.0
    assert warmup_cosine(5, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)  # half-way through the cosine
    assert warmup_cosine(110, 10, 110) == pytest.approx(0.0)
    assert warmup_cosine(110, 10, 110, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(35, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert warmup_cosine(500, 10, 110) == pytest.approx(0.0)  # clamps past the end


def test_no_weight_decay_set():
    mae = MaskedAutoencoder(
        embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2
    )
    names = {id(p): n for n, p in mae.named_parameters()}
    groups = weight_decay_groups(mae, 0.05, decay_tokens=False)
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    skipped = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "encoder.cls_token" in skipped and "decoder.mask_token" in skipped
    assert all("norm" in n or n.endswith(".bias") or "token" in n for n in skipped)
    assert all(n.endswith(".weight") and "norm" not in n for n in decayed)
    assert "encoder.blocks.0.attn.qkv.weight" in decayed and "encoder.patch_embed.proj.weight" in decayed
    # frozen sin-cos position embeddings are not optimised at all
    assert "encoder.pos_embed" not in decayed | skipped and "decoder.pos_embed" not in decayed | skipped
    assert decayed | skipped == {n for n, p in mae.named_parameters() if p.requires_grad}
