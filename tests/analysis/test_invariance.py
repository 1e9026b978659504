"""Semantic invariance of principal components: the score by hand, the streamed covariance against the batch one,
a direction written only by the position embedding (score 1), and random encoders: without a position embedding
every component is content and scores near the coin-flip value 1/sqrt(2); with semmae's sin-cos embedding the
high scorers are the components that position explains."""

import math

import pytest
import torch

from semmae.analysis import invariance as IV
from semmae.analysis.synthetic_images import synthetic_batches
from tests.analysis import planting
from tests.conftest import synthetic_garments

MEAN, STD = [0.2], [0.3]


def test_si_score_by_hand():
    assert float(IV.si_score(torch.tensor(1.0), torch.tensor(1.0))) == pytest.approx(1.0)
    assert float(IV.si_score(torch.tensor(0.0), torch.tensor(0.0))) == pytest.approx(1.0)
    assert float(IV.si_score(torch.tensor(1.0), torch.tensor(0.0))) == pytest.approx(0.0)
    assert float(IV.si_score(torch.tensor(0.5), torch.tensor(0.5))) == pytest.approx(1 / math.sqrt(2))
    p, q = 0.8, 0.6
    want = 2 * (p * q + 0.2 * 0.4) / (math.hypot(p, 0.2) + math.hypot(q, 0.4))
    assert float(IV.si_score(torch.tensor(p), torch.tensor(q))) == pytest.approx(want)
    # a component's score is the mean over positions
    shares = torch.tensor([[1.0, 0.5], [0.0, 0.5]])
    assert IV.component_scores(shares, shares).tolist() == pytest.approx([1.0, 1 / math.sqrt(2)])


def test_streamed_covariance_equals_the_batch_one():
    x = torch.randn(300, 5, dtype=torch.float64) @ torch.randn(5, 5, dtype=torch.float64) + 3.0
    cov = IV.Covariance(5)
    for part in x.split([1, 120, 179]):
        cov.update(part)
    torch.testing.assert_close(cov.cov, torch.cov(x.T))
    torch.testing.assert_close(cov.mean, x.mean(0))
    values, vectors = cov.components()
    assert (values[:-1] >= values[1:]).all()
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, cov.cov)


def test_soap_weights_and_projector():
    scores = torch.tensor([0.7, 0.95, 0.8, 0.72])
    w = IV.soap_weights(scores, mu=None, tau=0.05, threshold=0.75)  # mu = 2: the components scoring 0.95 and 0.8
    sig = lambda r: 1 / (1 + math.exp(-(2 - 0.5 - r) / 0.05))  # noqa: E731  rank r from the highest score
    assert w.tolist() == pytest.approx([0.7 * sig(3), 0.95 * sig(0), 0.8 * sig(1), 0.72 * sig(2)], rel=1e-5)
    assert float(w[0]) < 1e-6 and float(w[3]) < 1e-4
    assert IV.soap_weights(scores, mu=None, threshold=0.99).abs().sum() == 0
    v = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64)).Q
    proj = IV.projector(v, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(proj @ v[:, 1], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(proj @ v[:, 0], v[:, 0])


def real_images(n: int = 256) -> torch.Tensor:
    images, _ = synthetic_garments(n, 0, size=planting.SIZE)
    return (torch.tensor(images).float()[:, None] / 255 - MEAN[0]) / STD[0]


def score(enc, n: int = 256, block=None) -> IV.Invariance:
    settings = IV.InvarianceSettings(block=block)
    acc = IV.InvarianceAccumulator(settings, planting.DEPTH)
    x = real_images(n)
    for part in x.split(100):
        acc.update(IV.patch_tokens(enc, part, block))
    return acc.finish(enc, None, synthetic_batches(n, 1, planting.SIZE, MEAN, STD, seed=0, batch_size=100))


def test_a_direction_written_by_the_position_embedding_scores_one():
    enc = planting.encoder()
    planting.plant_positional_direction(enc)
    inv = score(enc)
    # the first component is the planted direction: dimension 0, less the token mean the final LayerNorm removes
    # (e_0 - 1/D, normalised: 0.984 at D = 32)
    assert abs(float(inv.vectors[0, 0])) == pytest.approx(
        (1 - 1 / 32) / math.sqrt((1 - 1 / 32) ** 2 + 31 / 32**2), abs=2e-3
    )
    assert float(inv.scores[0]) == pytest.approx(1.0, abs=1e-6)
    assert inv.top(1)[0]["component"] == 1 and inv.count() >= 1


def test_block_tokens_are_scored_where_asked():
    enc = planting.encoder()
    planting.plant_positional_direction(enc)
    inv = score(enc, 128, block=2)
    assert inv.where == "block_02" and float(inv.scores[0]) == pytest.approx(1.0, abs=1e-6)


def test_a_random_encoder_without_position_embedding_is_silent():
    enc = planting.encoder(seed=3)
    with torch.no_grad():
        enc.pos_embed.zero_()
    inv = score(enc)
    assert inv.count() == 0
    assert inv.top(1)[0]["score"] < 0.74  # coin flips score 1/sqrt(2) = 0.707


def test_a_random_encoder_with_its_sincos_embedding_has_positional_components():
    """Not silent, and rightly so: the fixed position embedding passes through a random encoder. The components
    that score high are the ones that position explains (between-position variance of the projection)."""
    enc = planting.encoder(seed=3)
    inv = score(enc)
    assert inv.count() >= 1
    t = IV.patch_tokens(enc, real_images(256), None)
    proj = (t - inv.mean.float()) @ inv.vectors.float()  # [N, P, D]
    positional = proj.mean(dim=0).var(dim=0) / proj.flatten(0, 1).var(dim=0)  # share explained by position
    high = inv.scores >= 0.75
    low = (inv.scores < 0.72) & inv.scored
    assert float(positional[high & inv.scored].mean()) > 0.5 > float(positional[low].mean())
