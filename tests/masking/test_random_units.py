"""random_units (docs/masking.md#random_units): MAE random masking over k x k units of patches; every unit all visible
or all hidden (one unit partly visible when n_keep is not a multiple of k^2), exact count, a unit that does not
divide the grid is a one-line ConfigError naming masking.unit."""

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from semmae.errors import ConfigError
from semmae.masking import RandomUnitsMasking
from semmae.masking.base import num_keep
from semmae.masking.generator import StepGenerator
from semmae.masking.random_units import unit_index


def unit_visibility(mask: torch.Tensor, grid, k: int) -> torch.Tensor:
    """[B, N] bool (True = hidden) -> [B, units] number of visible patches per unit."""
    idx = unit_index(grid, k, mask.device).expand(mask.shape[0], -1)
    units = (grid[0] // k) * (grid[1] // k)
    return torch.zeros(mask.shape[0], units).scatter_add_(1, idx, (~mask).float())


@st.composite
def cases(draw):
    k = draw(st.integers(1, 4))
    grid = (k * draw(st.integers(1, 5)), k * draw(st.integers(1, 5)))
    return (
        k,
        grid,
        draw(st.floats(0.05, 0.95)),
        draw(st.sampled_from(["official", "round"])),
        draw(st.integers(1, 5)),
        draw(st.integers(0, 2**31)),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_exact_count_units_and_determinism(case):
    k, grid, ratio, rule, b, seed = case
    n = grid[0] * grid[1]
    exact = n * (1 - ratio)
    assume(0 < (int(exact) if rule == "official" else round(exact)) < n)
    n_keep = num_keep(n, ratio, rule)
    strategy = RandomUnitsMasking(ratio, unit=k, visible_count=rule)
    images = torch.randn(b, 1, grid[0] * 2, grid[1] * 2)
    gen = StepGenerator(seed)
    m = strategy(images, grid, gen(images.device, 0, 0, 0, 0))
    assert torch.all((~m.mask).sum(1) == n_keep)
    again = strategy(images, grid, gen(images.device, 0, 0, 0, 0))
    assert torch.equal(m.mask, again.mask) and torch.equal(m.ids_keep, again.ids_keep)
    per_unit = unit_visibility(m.mask, grid, k)
    partial = ((per_unit > 0) & (per_unit < k * k)).sum(1)
    if n_keep % (k * k) == 0:
        assert torch.all(partial == 0)  # visibility constant on every unit
        assert torch.all((per_unit == k * k).sum(1) == n_keep // (k * k))
    else:
        assert torch.all(partial == 1)  # exactly one unit cut, to make the count exact
        assert torch.all((per_unit == k * k).sum(1) == n_keep // (k * k))


def test_every_unit_is_equally_likely_to_be_visible():
    strategy = RandomUnitsMasking(0.75, unit=2)
    images = torch.zeros(4000, 1, 16, 16)
    m = strategy(images, (8, 8), torch.Generator().manual_seed(0))
    share = unit_visibility(m.mask, (8, 8), 2).eq(4).float().mean(0)  # 16 units, 4 visible: 1/4 each
    assert torch.all((share - 0.25).abs() < 0.03), share
    steps = [strategy(images[:8], (8, 8), StepGenerator(0)(images.device, 0, 0, 0, i)).mask for i in range(2)]
    assert not torch.equal(*steps)


def test_a_unit_that_does_not_divide_the_grid_is_a_one_line_config_error():
    strategy = RandomUnitsMasking(0.75, unit=2)
    with pytest.raises(ConfigError, match=r"^masking\.unit=2 does not divide the 7x8 patch grid") as info:
        strategy.check((7, 8))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"^masking\.unit=2"):
        strategy(torch.zeros(1, 1, 14, 14), (7, 7), None)


@pytest.mark.parametrize("unit", [0, -2, 1.5, "two", True])
def test_bad_units_are_config_errors(unit):
    with pytest.raises(ConfigError, match="masking.unit"):
        RandomUnitsMasking(unit=unit)


def test_bad_unit_fails_when_the_model_is_built(compose_cfg):
    from hydra.utils import instantiate

    from semmae.cli import one_line
    from tests.tasks.test_pretrain import TINY

    cfg = compose_cfg("pretrain", [*TINY, "masking=random_units", "masking.unit=3"])
    with pytest.raises(Exception) as info:
        instantiate(cfg.model)
    assert one_line(info.value).startswith("masking.unit=3 does not divide the 8x8 patch grid")
