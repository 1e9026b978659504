"""Content-free images for the semantic-invariance score: seeded, the four kinds in equal shares, normalised with
the dataset's statistics, and each kind has the structure its name says."""

import pytest
import torch

from semmae.analysis import synthetic_images as S


def test_seeded_shapes_and_normalisation():
    a = torch.cat(list(S.synthetic_batches(10, 3, 16, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.1], seed=4, batch_size=4)))
    b = torch.cat(list(S.synthetic_batches(10, 3, 16, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.1], seed=4, batch_size=3)))
    c = torch.cat(list(S.synthetic_batches(10, 3, 16, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.1], seed=5, batch_size=4)))
    assert a.shape == (10, 3, 16, 16)
    assert not torch.equal(a, c)
    assert torch.equal(a[:3], b[:3])  # the first batch is drawn alike whatever the batch size after it
    pixels = a * torch.tensor([0.2, 0.2, 0.1])[:, None, None] + torch.tensor([0.5, 0.4, 0.3])[:, None, None]
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6


def test_each_kind_looks_like_its_name():
    g = torch.Generator().manual_seed(0)
    const = S.constant(4, 1, 16, g)
    assert torch.equal(const, const[..., :1, :1].expand_as(const))
    grad = S.gradient(4, 1, 16, g)
    rows = grad[..., 1:, :] - grad[..., :-1, :]
    assert float(rows.std()) < 0.05  # linear ramps: almost constant steps
    pink = S.pink_noise(64, 1, 32, g) - 0.5
    white = torch.rand(64, 1, 32, 32, generator=g) - 0.5
    # pink noise: neighbouring pixels correlate far more than in white noise
    corr = lambda x: float((x[..., :, 1:] * x[..., :, :-1]).mean() / (x * x).mean())  # noqa: E731
    assert corr(pink) > 0.5 > abs(corr(white))
    mod = S.modulated_white_noise(4, 2, 16, g)
    assert mod.shape == (4, 2, 16, 16) and 0 <= float(mod.min()) and float(mod.max()) <= 1


def test_kinds_come_in_equal_shares():
    batch = next(S.synthetic_batches(8, 1, 8, mean=[0.0], std=[1.0], seed=0, batch_size=8))
    constant = (batch.flatten(1).std(dim=1) == 0).nonzero().flatten().tolist()
    assert constant == [3, 7]
    with pytest.raises(ValueError):
        next(S.synthetic_batches(0, 1, 8, [0.0], [1.0]))
