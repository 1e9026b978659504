"""Low-shot training sets: class-balanced, seeded, nested over N, and refused beyond the smallest class."""

import pytest
import torch

from semmae.data.low_shot import class_balanced_subset
from semmae.errors import ConfigError

LABELS = torch.tensor([0] * 30 + [1] * 12 + [2] * 50 + [3] * 7)
LABELS = LABELS[torch.randperm(99, generator=torch.Generator().manual_seed(3))]


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_every_class_gets_n_images(n):
    picked = class_balanced_subset(LABELS, n, seed=0)
    assert picked == sorted(set(picked))
    assert torch.bincount(LABELS[picked], minlength=4).tolist() == [n] * 4


def test_seeded_nested_and_different_across_seeds():
    assert class_balanced_subset(LABELS, 5, seed=1) == class_balanced_subset(LABELS, 5, seed=1)
    assert class_balanced_subset(LABELS, 5, seed=1) != class_balanced_subset(LABELS, 5, seed=2)
    for small, large in ((1, 2), (2, 5), (5, 7)):
        assert set(class_balanced_subset(LABELS, small, 4)) <= set(class_balanced_subset(LABELS, large, 4))


def test_draws_cover_the_class_over_seeds():
    seen = {i for s in range(60) for i in class_balanced_subset(LABELS, 1, s) if LABELS[i] == 3}
    assert len(seen) == 7  # every image of the 7-image class is drawn by some seed


@pytest.mark.parametrize(
    "n,match", [(8, "more than the 7 training images of class 3"), (0, ">= 1"), (2.5, "whole number")]
)
def test_refused(n, match):
    with pytest.raises(ConfigError, match=match):
        class_balanced_subset(LABELS, n, seed=0)
