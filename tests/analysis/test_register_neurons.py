"""High-norm outliers and register neurons: the detection rule by hand, a patch token of known norm made by one MLP
neuron of block 1 (found at its block and at the last block, the neuron ranked first), and a randomly initialised
encoder with no outliers."""

import pytest
import torch
import torch.nn.functional as F

from semmae.analysis import register_neurons as RN
from semmae.analysis.capture import capture
from tests.analysis import planting

POSITION, NEURON = 5, 7


def test_outlier_mask_by_hand():
    # CLS (norm 100, never an outlier) + 5 patches with norms 1, 1, 2, 1, 30: median 1
    tokens = torch.zeros(1, 6, 2)
    tokens[0, :, 0] = torch.tensor([100.0, 1, 1, 2, 1, 30])
    assert RN.outlier_mask(tokens, 1, ratio=10).tolist() == [[False, False, False, False, False, True]]
    assert RN.outlier_mask(tokens, 1, ratio=1.5).tolist() == [[False, False, False, True, False, True]]
    assert RN.outlier_mask(tokens, 1, norm=1.5).tolist() == [[False, False, False, True, False, True]]


def planted():
    enc = planting.encoder()
    planting.plant_outlier_neuron(enc, POSITION, NEURON)
    return enc


def test_the_planted_token_has_its_known_norm_and_is_the_only_outlier():
    enc, x = planted(), planting.images(6)
    cap = capture(enc, x)
    blk, prefix = enc.blocks[0], enc.num_prefix_tokens
    with torch.no_grad():
        pos = enc.pos_embed[0, prefix + POSITION]
        pre = blk.mlp.fc1(blk.norm2(pos))[NEURON]
        expected = (pos + F.gelu(pre) * blk.mlp.fc2.weight[0, NEURON] * torch.eye(planting.WIDTH)[0]).norm()
        assert float(F.gelu(pre) * blk.mlp.fc2.weight[0, NEURON]) == pytest.approx(100.0, rel=1e-5)
    norms = cap.tokens[0][:, prefix + POSITION].norm(dim=-1)
    torch.testing.assert_close(norms, expected.expand(6), atol=1e-3, rtol=1e-5)
    acc = RN.OutlierAccumulator(RN.OutlierSettings(block=1), planting.P)
    mask = acc.update(cap.tokens[0], prefix)
    assert mask[:, prefix:].nonzero()[:, 1].tolist() == [POSITION] * 6
    res = acc.result()
    assert res["outlier_fraction"] == pytest.approx(1 / planting.P) and res["images_with_outliers"] == 1.0
    assert res["outlier_positions"] == [POSITION] and res["outlier_norm_ratio"] > 10


@pytest.mark.parametrize("detect", [1, 3])  # at the neuron's own block; at the last block (blocks 2-3 random)
def test_the_neuron_that_makes_it_is_ranked_first(detect):
    enc, x = planted(), planting.images(6)
    settings = RN.OutlierSettings(block=detect, top_k=5)
    cap = capture(enc, x)
    mask = RN.OutlierAccumulator(settings, planting.P).update(
        cap.tokens[settings.detection_block(3)], enc.num_prefix_tokens
    )
    assert mask[:, enc.num_prefix_tokens + POSITION].all()
    scores = RN.NeuronScores(planting.DEPTH, RN.mlp_width(enc))
    scores.update(enc, x, mask)
    ranked = scores.ranked(detect, 5)
    assert (ranked[0]["block"], ranked[0]["neuron"]) == (1, NEURON)
    assert ranked[0]["score"] > 10 * ranked[1]["score"]
    assert ranked[0]["elsewhere"] < 1e-3  # the neuron is off on every other patch


def test_a_random_encoder_has_no_outliers_and_ranks_nothing():
    enc = planting.encoder(seed=3)
    x = planting.images(16)
    cap = capture(enc, x)
    for block in range(planting.DEPTH):
        acc = RN.OutlierAccumulator(RN.OutlierSettings(block=block + 1), planting.P)
        mask = acc.update(cap.tokens[block], enc.num_prefix_tokens)
        assert not mask.any() and acc.result()["outlier_fraction"] == 0.0
    scores = RN.NeuronScores(planting.DEPTH, RN.mlp_width(enc))
    scores.update(enc, x, torch.zeros(16, 1 + planting.P, dtype=torch.bool))
    assert scores.ranked(3, 5) == []


def test_settings_are_checked():
    with pytest.raises(Exception, match="ratio"):
        RN.OutlierSettings(ratio=1.0)
    with pytest.raises(Exception, match="block"):
        RN.OutlierSettings(block=7).detection_block(6)
