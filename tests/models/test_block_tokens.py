"""Block k's tokens: the last block's are forward_features' (after the final norm), an earlier block's are the
residual stream after that block; bad block settings name the depth."""

import pytest
import torch

from semmae.errors import ConfigError
from semmae.models.block_tokens import block_tokens, resolve_blocks
from semmae.models.encoder import ViTEncoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ViTEncoder(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=3, num_heads=2, reg_tokens=2).eval()


def test_blocks_are_the_residual_stream_and_the_last_is_normed(encoder):
    images = torch.randn(2, 1, 16, 16)
    got = block_tokens(encoder, images, [1, 3])
    with torch.no_grad():
        x = encoder.norm_pre(encoder._pos_embed(encoder.patch_embed(images)))
        first = encoder.blocks[0](x)
        assert torch.allclose(got[1], first, atol=1e-5)
        assert torch.allclose(got[3], encoder.forward_features(images), atol=1e-5)
    assert got[1].shape == (2, 3 + 16, 32)  # CLS, 2 registers, 16 patches


@pytest.mark.parametrize("setting,blocks", [("last", [3]), ("all", [1, 2, 3]), (2, [2]), ([3, 1, 3], [1, 3])])
def test_resolve_blocks(setting, blocks):
    assert resolve_blocks(setting, 3) == blocks


@pytest.mark.parametrize("setting", [4, 0, [1, 5], "first", True])
def test_bad_blocks_name_the_depth(setting):
    with pytest.raises(ConfigError, match="model.block"):
        resolve_blocks(setting, 3)
