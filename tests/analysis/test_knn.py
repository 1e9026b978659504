"""DINO's weighted k-NN against hand computations: the votes, the neighbours, the chunking, the bad settings."""

import math

import pytest
import torch

from semmae.analysis.knn import knn_accuracy, knn_predict, weighted_votes
from semmae.errors import ConfigError


def test_weighted_votes_by_hand():
    similarity = torch.tensor([[0.9, 0.8, 0.1]])
    labels = torch.tensor([[1, 0, 1]])
    votes = weighted_votes(similarity, labels, num_classes=3, temperature=0.1)
    expected = torch.tensor([[math.exp(8.0), math.exp(9.0) + math.exp(1.0), 0.0]])
    assert torch.allclose(votes, expected, rtol=1e-5)


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_neighbours_and_votes_of_a_small_set_by_hand():
    # training points on the unit circle (scaled: the features are L2-normalised first)
    train = torch.tensor([unit(0), unit(10), unit(20), unit(90), unit(100), [-3.0, 0.0]]) * torch.tensor(
        [[1.0], [2.0], [0.5], [1.0], [3.0], [1.0]]
    )
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    test = torch.tensor([unit(15), unit(60)])
    # test 1 (15 deg): neighbours 10, 20, 0 (cos 5, 5, 15 deg); k=1 -> whichever of 10/20 sorts first is a tie, so
    # read k=3: class 0 gets e^(cos5/T) + e^(cos15/T), class 1 e^(cos5/T)  -> class 0
    # test 2 (60 deg): neighbours 90, 100, 20 (cos 30, 40, 40 deg): k=3 -> class 1 (all three are class 1)
    preds = knn_predict(train, labels, test, num_classes=3, ks=[3], temperature=0.5)
    assert preds[3][:, 0].tolist() == [0, 1]
    t = 0.5
    c = lambda deg: math.exp(math.cos(math.radians(deg)) / t)  # noqa: E731
    votes0 = {0: c(5) + c(15), 1: c(5), 2: 0.0}
    assert preds[3][0].tolist() == sorted(votes0, key=votes0.get, reverse=True)
    # k=5 for the second: 90, 100, 20 (40), 10 (50), 0 (60) -> class 1: c30+c40+c40, class 0: c50+c60
    preds = knn_predict(train, labels, test[1:], num_classes=3, ks=[5], temperature=t)
    assert c(30) + c(40) + c(40) > c(50) + c(60) and preds[5][0, :2].tolist() == [1, 0]


def test_chunks_and_several_k_give_what_one_pass_per_k_gives():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 8, generator=g), torch.randn(70, 8, generator=g)
    labels = torch.randint(0, 6, (300,), generator=g)
    together = knn_predict(train, labels, test, 6, ks=[10, 20, 50], chunk_size=16)
    for k in (10, 20, 50):
        alone = knn_predict(train, labels, test, 6, ks=[k], chunk_size=1000)[k]
        assert torch.equal(together[k][:, 0], alone[:, 0])


def test_accuracy_of_separated_clusters_and_the_top5():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(8)[:6] * 10
    ytr, yte = torch.randint(0, 6, (240,), generator=g), torch.randint(0, 6, (60,), generator=g)
    xtr = centres[ytr] + torch.randn(240, 8, generator=g)
    xte = centres[yte] + torch.randn(60, 8, generator=g)
    acc = knn_accuracy(xtr, ytr, xte, yte, num_classes=6, ks=[10, 20])
    assert acc[20]["top1"] == 1.0 and acc[10]["top5"] == 1.0
    wrong = knn_accuracy(xtr, ytr, xte, (yte + 1) % 6, num_classes=6, ks=[20])
    assert wrong[20]["top1"] == 0.0
    assert "top5" not in knn_accuracy(xtr, ytr % 3, xte, yte % 3, num_classes=3, ks=[5])[5]


@pytest.mark.parametrize(
    "ks,temperature,match", [([0], 0.07, ">= 1"), ([500], 0.07, "more than the 300"), ([20], 0.0, "temperature")]
)
def test_bad_settings(ks, temperature, match):
    with pytest.raises(ConfigError, match=match):
        knn_predict(torch.randn(300, 4), torch.zeros(300, dtype=torch.long), torch.randn(5, 4), 2, ks, temperature)
