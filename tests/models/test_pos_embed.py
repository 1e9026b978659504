import numpy as np
import pytest
import torch

from semmae.models.pos_embed import sincos_1d, sincos_2d


def reference_2d(embed_dim: int, h: int, w: int) -> np.ndarray:
    """MAE's numpy formulation, written out independently: grid[0] = column, grid[1] = row."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_w, grid_h = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.concatenate([one_d(embed_dim // 2, grid_w), one_d(embed_dim // 2, grid_h)], axis=1)


@pytest.mark.parametrize("dim,h,w", [(16, 4, 4), (128, 8, 8), (64, 3, 5)])
def test_sincos_2d_matches_reference(dim, h, w):
    ours = sincos_2d(dim, (h, w)).numpy()
    np.testing.assert_allclose(ours, reference_2d(dim, h, w), atol=1e-6)


def test_sincos_known_values():
    emb = sincos_2d(8, (2, 3), cls_token=True)
    assert emb.shape == (7, 8)
    assert torch.all(emb[0] == 0)  # CLS row
    # patch (row 0, col 0): sin(0) = 0 and cos(0) = 1 in both halves
    assert torch.allclose(emb[1], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1], dtype=torch.float32))
    # patch (row 1, col 2): first half encodes col 2, second half row 1; omega = (1, 1/100) for d=4
    expected = torch.tensor(
        [np.sin(2), np.sin(0.02), np.cos(2), np.cos(0.02), np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01)]
    )
    assert torch.allclose(emb[1 + 1 * 3 + 2], expected.float(), atol=1e-6)


def test_sincos_rejects_bad_dims():
    with pytest.raises(ValueError):
        sincos_2d(6, (2, 2))
    with pytest.raises(ValueError):
        sincos_1d(3, torch.arange(2))
