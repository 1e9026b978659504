import pytest
import torch

from semmae.errors import ConfigError
from semmae.masking import RandomMasking, keep_lowest
from semmae.models.encoder import ViTEncoder
from semmae.models.mae import MaskedAutoencoder, masked_patch_loss, patchify, unpatchify


@pytest.fixture
def mae():
    torch.manual_seed(0)
    return MaskedAutoencoder(
        img_size=32,
        patch_size=4,
        in_chans=1,
        embed_dim=64,
        depth=2,
        num_heads=4,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    )


def test_shapes_through_encoder_and_decoder(mae):
    x = torch.randn(3, 1, 32, 32)
    mask = RandomMasking(0.75)(x, mae.grid_size, torch.Generator().manual_seed(0))
    assert mask.ids_keep.shape == (3, 16) and mask.mask.shape == (3, 64)
    latent = mae.encoder.forward_visible(x, mask.ids_keep)
    assert latent.shape == (3, 1 + 16, 64)
    pred = mae.decoder(latent, mask.ids_restore)
    assert pred.shape == (3, 64, 4 * 4 * 1)
    loss, pred2 = mae(x, mask)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.allclose(pred, pred2)


def test_three_channel_input():
    m = MaskedAutoencoder(
        img_size=16,
        patch_size=4,
        in_chans=3,
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    x = torch.randn(2, 3, 16, 16)
    loss, pred = m(x, RandomMasking(0.5)(x, m.grid_size))
    assert pred.shape == (2, 16, 48)


def test_patchify_roundtrip_and_order():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    # patch 1 is the top-right 4x4 block; its first entry is pixel (0, 4) of channel 0, then channel 1
    assert p[0, 1, 0] == x[0, 0, 0, 4] and p[0, 1, 1] == x[0, 1, 0, 4]
    assert torch.equal(unpatchify(p, 4, (2, 2), 3), x)


def test_loss_counts_hidden_patches_only():
    torch.manual_seed(0)
    target = torch.randn(2, 8, 12)
    pred = torch.randn(2, 8, 12)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :3] = True  # first three hidden
    base = masked_patch_loss(pred, target, mask, norm_pix=False)
    expected = ((pred - target) ** 2).mean(-1)[:, :3].mean()
    assert torch.allclose(base, expected)
    changed_visible = pred.clone()
    changed_visible[:, 5] += 100.0
    assert torch.allclose(masked_patch_loss(changed_visible, target, mask, False), base)
    changed_hidden = pred.clone()
    changed_hidden[:, 1] += 1.0
    assert masked_patch_loss(changed_hidden, target, mask, False) > base


def test_norm_pix_loss_normalises_each_target_patch():
    target = torch.randn(1, 4, 16) * 5 + 3
    mask = torch.ones(1, 4, dtype=torch.bool)
    t = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert masked_patch_loss(t, target, mask, norm_pix=True) < 1e-8
    assert masked_patch_loss(t, target, mask, norm_pix=False) > 1.0


def test_encoder_sees_only_visible_tokens(mae):
    x = torch.randn(2, 1, 32, 32)
    mask = RandomMasking(0.75)(x, mae.grid_size, torch.Generator().manual_seed(1))
    out1 = mae.encoder.forward_visible(x, mask.ids_keep)
    # corrupt every hidden patch: the encoder output must not change
    hidden_px = unpatchify(mask.mask[..., None].expand(-1, -1, 16).float(), 4, (8, 8), 1) > 0
    x2 = torch.where(hidden_px, torch.randn_like(x) * 10, x)
    out2 = mae.encoder.forward_visible(x2, mask.ids_keep)
    assert torch.allclose(out1, out2, atol=1e-5)


def test_visible_forward_with_all_patches_equals_full_forward(mae):
    mae.eval()
    x = torch.randn(2, 1, 32, 32)
    ids = torch.arange(64).expand(2, -1)
    assert torch.allclose(mae.encoder.forward_visible(x, ids), mae.encoder.forward_features(x), atol=1e-5)


def test_position_embeddings_are_fixed(mae):
    assert not mae.encoder.pos_embed.requires_grad
    assert not mae.decoder.pos_embed.requires_grad


def test_bad_geometry_is_a_config_error():
    with pytest.raises(ConfigError, match="not divisible by patch size"):
        ViTEncoder(img_size=30, patch_size=4)


def test_keep_lowest_contract():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.3]])
    m = keep_lowest(scores, 2)
    assert m.ids_keep.tolist() == [[1, 3]]
    assert m.mask.tolist() == [[True, False, True, False]]
    assert torch.equal(torch.gather(torch.argsort(scores, 1), 1, m.ids_restore), torch.arange(4)[None])
