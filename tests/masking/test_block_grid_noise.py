"""The structured baselines: block (BEiT rectangles), grid (MAE's regular grid), colored_noise (filtered noise)."""

import pytest
import torch
from scipy.stats import chisquare

from semmae.masking import BlockMasking, ColoredNoiseMasking, GridMasking, RandomMasking
from semmae.masking.components import count_components


def mean_components(strategy, grid=(14, 14), b=256, hidden=False):
    images = torch.zeros(b, 1, grid[0] * 2, grid[1] * 2)
    m = strategy(images, grid, torch.Generator().manual_seed(0))
    return count_components(m.mask if hidden else ~m.mask, grid).float().mean().item()


@pytest.mark.parametrize("ratio,cell,grid", [(0.75, 2, (8, 8)), (0.75, 2, (14, 14)), (1 - 1 / 9, 3, (9, 12))])
def test_grid_keeps_one_patch_per_cell(ratio, cell, grid):
    h, w = grid
    m = GridMasking(ratio)(torch.zeros(32, 1, h, w), grid, torch.Generator().manual_seed(0))
    visible = (~m.mask).reshape(32, h // cell, cell, w // cell, cell)
    assert torch.all(visible.sum(dim=(2, 4)) == 1)  # one per cell
    offsets = visible.float().sum(dim=(1, 3)).flatten(1).argmax(1)  # the same offset in every cell of an image
    assert torch.all(visible.sum(dim=(1, 3)).flatten(1).max(1).values == (h // cell) * (w // cell))
    assert offsets.unique().numel() > 1  # and it varies between images


def test_grid_on_a_grid_that_is_not_a_multiple_of_the_cell_still_keeps_n_keep():
    m = GridMasking(0.75)(torch.zeros(16, 1, 7, 7), (7, 7), torch.Generator().manual_seed(0))
    assert torch.all((~m.mask).sum(1) == 12)


def test_block_hides_rectangles_and_reaches_the_ratio_with_them():
    strategy = BlockMasking(0.75)
    images = torch.zeros(512, 1, 28, 28)
    scores = strategy.scores(images, (14, 14), torch.Generator().manual_seed(0))
    m = strategy(images, (14, 14), torch.Generator().manual_seed(0))
    covered = scores >= 1.0  # scores below 1: no candidate rectangle covers the patch
    assert covered[m.mask].float().mean() > 0.999
    assert mean_components(strategy, hidden=True) < 4  # a few overlapping blocks, not scattered patches
    assert mean_components(strategy) < 0.5 * mean_components(RandomMasking(0.75))


def test_block_partial_last_rectangle_is_taken_row_by_row_from_its_top_or_bottom():
    # 32 patches to hide, one candidate: a square of area 32 -> 6 x 6 = 36, so 32 of it are hidden, in raster order
    strategy = BlockMasking(0.5, min_patches=32, min_aspect=1.0, num_candidates=1)
    m = strategy(torch.zeros(32, 1, 8, 8), (8, 8), torch.Generator().manual_seed(0))
    sides = set()
    for hidden in m.mask.reshape(32, 8, 8):
        rows, cols = hidden.nonzero().unbind(1)
        top, left = int(rows.min()), int(cols.min())
        assert int(rows.max()) - top == 5 and int(cols.max()) - left == 5
        box = hidden[top : top + 6, left : left + 6].reshape(-1)
        from_top = bool(box[:32].all() and not box[32:].any())
        from_bottom = bool(box[4:].all() and not box[:4].any())
        assert from_top or from_bottom
        sides.add(from_top)
    assert sides == {True, False}


def test_colored_noise_patterns_and_stationarity():
    random = mean_components(RandomMasking(0.75))
    red = mean_components(ColoredNoiseMasking(0.75, color="red", frequency=0.08))
    green = mean_components(ColoredNoiseMasking(0.75, color="green"))
    blue = mean_components(ColoredNoiseMasking(0.75, color="blue", frequency=0.2))
    assert red < green < random and blue > green, (red, green, random, blue)
    for color in ("red", "green", "blue", "purple"):  # every position equally likely to be visible
        m = ColoredNoiseMasking(0.75, color=color)(
            torch.zeros(4000, 1, 12, 12), (6, 6), torch.Generator().manual_seed(1)
        )
        assert chisquare((~m.mask).sum(0).numpy()).pvalue > 1e-3, color
