"""Batched connected components agree with scipy within the fixed round count, also on the hardest shapes."""

import numpy as np
import pytest
import torch

from semmae.masking.components import count_components, default_rounds, grid_components
from tests.masking.helpers import reference_roots, snake, spiral


@pytest.mark.parametrize("grid", [(1, 1), (1, 9), (5, 3), (7, 7), (8, 8), (14, 14), (16, 16)])
@pytest.mark.parametrize("num_labels", [1, 2, 3, 8])
def test_random_label_maps_match_scipy(grid, num_labels):
    g = torch.Generator().manual_seed(grid[0] * 100 + num_labels)
    labels = torch.randint(0, num_labels, (64, grid[0] * grid[1]), generator=g)
    assert torch.equal(grid_components(labels, grid), reference_roots(labels, grid))


@pytest.mark.parametrize("size", [7, 8, 14, 16])
def test_long_corridors_converge_within_the_bound(size):
    maps = []
    for base in (spiral(size, size), snake(size, size), snake(size, size).T):
        maps += [base, base[::-1], base[:, ::-1], base[::-1, ::-1], base.T]
    labels = torch.from_numpy(np.stack([m.copy() for m in maps])).reshape(len(maps), -1)
    grid = (size, size)
    assert torch.equal(grid_components(labels, grid), reference_roots(labels, grid))
    # the corridor really is long: plain propagation with the same number of rounds would not finish
    corridor = int((labels[0] == 1).sum())
    assert corridor > 2 * default_rounds(size * size)


def test_too_few_rounds_only_over_split():
    """An unfinished run never merges two components: every root it reports lies in the patch's own component."""
    labels = torch.from_numpy(spiral(14, 14)).reshape(1, -1)
    ref = reference_roots(labels, (14, 14))
    partial = grid_components(labels, (14, 14), rounds=1)
    assert not torch.equal(partial, ref)
    assert torch.equal(ref.gather(1, partial), ref)


def test_count_components():
    members = torch.tensor([[1, 0, 1, 1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert count_components(members, (3, 3)).tolist() == [3]
    assert count_components(~members, (3, 3)).tolist() == [2]
