"""Properties every masking strategy must have, for every ratio it accepts (hypothesis), and their configs."""

import pytest
import torch
from hydra.utils import instantiate
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from semmae.config import config_dir
from semmae.errors import ConfigError
from semmae.masking import (
    BlockMasking,
    ColoredNoiseMasking,
    GridMasking,
    RandomMasking,
    RandomUnitsMasking,
    SemanticFeaturesMasking,
    SemanticInformativeMasking,
    SemanticMasking,
    SemanticStratifiedMasking,
)
from semmae.masking.base import num_keep
from semmae.masking.generator import StepGenerator
from tests.masking.helpers import smooth_images

GRID_RATIOS = (0.75, 1 - 1 / 9, 1 - 1 / 16)


def build(name: str, ratio: float, rule: str = "official"):
    return {
        "random": lambda: RandomMasking(ratio, visible_count=rule),
        "block": lambda: BlockMasking(ratio, visible_count=rule),
        "grid": lambda: GridMasking(ratio, visible_count=rule),
        "semantic": lambda: SemanticMasking(ratio, visible_count=rule),
        "semantic_r1": lambda: SemanticMasking(ratio, random_fraction=1.0, visible_count=rule),
        "semantic_k1": lambda: SemanticMasking(ratio, num_regions=1, random_fraction=0.0, visible_count=rule),
        "semantic_given": lambda: SemanticMasking(ratio, segmenter="given", visible_count=rule),
        "colored_noise": lambda: ColoredNoiseMasking(ratio, visible_count=rule),
        "red_noise": lambda: ColoredNoiseMasking(ratio, color="red", frequency=0.1, visible_count=rule),
        "blue_noise": lambda: ColoredNoiseMasking(ratio, color="blue", visible_count=rule),
        "purple_noise": lambda: ColoredNoiseMasking(ratio, color="purple", visible_count=rule),
        "semantic_informative": lambda: SemanticInformativeMasking(ratio, alpha=2.0, visible_count=rule),
        "semantic_stratified": lambda: SemanticStratifiedMasking(ratio, visible_count=rule),  # progress 0: no key
        "random_units_1": lambda: RandomUnitsMasking(ratio, unit=1, visible_count=rule),  # divides every grid
        # warmup 0: the batch features from the first step (no "progress" in the batch = progress 0)
        "semantic_features": lambda: SemanticFeaturesMasking(ratio, warmup=0.0, visible_count=rule),
        "semantic_features_warmup": lambda: SemanticFeaturesMasking(ratio, warmup=0.5, visible_count=rule),
    }[name]()


NAMES = [
    "random",
    "block",
    "grid",
    "semantic",
    "semantic_r1",
    "semantic_k1",
    "semantic_given",
    "colored_noise",
    "red_noise",
    "blue_noise",
    "purple_noise",
    "semantic_informative",
    "semantic_stratified",
    "random_units_1",
    "semantic_features",
    "semantic_features_warmup",
]


def inputs(b, grid, patch, channels, seed):
    g = torch.Generator().manual_seed(seed)
    images = smooth_images(b, channels, max(grid) * patch, g)[..., : grid[0] * patch, : grid[1] * patch]
    segments = torch.randint(0, 4, (b, grid[0], grid[1]), generator=g)
    features = torch.randn(b, grid[0] * grid[1], 8, generator=g)  # what PretrainTask passes semantic_features
    return images, {"image": images, "segments": segments, "features": features}


@st.composite
def cases(draw):
    name = draw(st.sampled_from(NAMES))
    ratio = draw(st.sampled_from(GRID_RATIOS)) if name == "grid" else draw(st.floats(0.05, 0.95))
    grid = (draw(st.integers(1, 14)), draw(st.integers(2, 14)))
    rule = draw(st.sampled_from(["official", "round"]))
    return name, ratio, rule, grid, draw(st.integers(1, 6)), draw(st.sampled_from([1, 3])), draw(st.integers(0, 2**31))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_mask_invariants(case):
    name, ratio, rule, grid, b, channels, seed = case
    strategy = build(name, ratio, rule)
    images, batch = inputs(b, grid, 2, channels, seed)
    n = grid[0] * grid[1]
    exact = n * (1 - ratio)
    assume(0 < (int(exact) if rule == "official" else round(exact)) < n)  # 0 or N visible: a ConfigError
    assume(getattr(strategy, "segmenter", "given") == "given" or strategy.num_regions <= n)  # else a ConfigError
    n_keep = num_keep(n, ratio, rule)
    gen = StepGenerator(seed)
    m = strategy(images, grid, gen(images.device, 0, 0, 0, 0), batch)
    assert m.ids_keep.shape == (b, n_keep) and m.ids_restore.shape == (b, n) and m.mask.shape == (b, n)
    assert torch.all((~m.mask).sum(1) == n_keep)  # exactly n_keep visible
    assert torch.all(m.ids_keep.sort(1).values.diff(dim=1) > 0)  # no duplicates
    assert not m.mask.gather(1, m.ids_keep).any()  # the kept ids are the visible ones
    shuffle = torch.argsort(m.ids_restore, dim=1)  # ids_restore inverts the score order
    assert torch.equal(shuffle.gather(1, m.ids_restore), torch.arange(n).expand(b, n))
    assert torch.equal(shuffle[:, :n_keep], m.ids_keep)
    again = strategy(images, grid, gen(images.device, 0, 0, 0, 0), batch)
    assert torch.equal(again.mask, m.mask) and torch.equal(again.ids_keep, m.ids_keep)  # deterministic


@pytest.mark.parametrize("name", NAMES)
def test_ranks_epochs_and_steps_get_different_masks(name):
    ratio = 0.75
    strategy = build(name, ratio)
    images, batch = inputs(8, (8, 8), 4, 1, 0)
    gen = StepGenerator(0)
    masks = [
        strategy(images, (8, 8), gen(images.device, 0, *parts), batch).mask
        for parts in [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    ]  # (rank, epoch, batch)
    for other in masks[1:]:
        assert not torch.equal(masks[0], other)


@pytest.mark.parametrize(
    "build_bad,key",
    [
        (lambda: SemanticMasking(mask_ratio=1.0), "mask_ratio"),
        (lambda: SemanticMasking(mask_ratio=0.0), "mask_ratio"),
        (lambda: BlockMasking(mask_ratio=-0.1), "mask_ratio"),
        (lambda: ColoredNoiseMasking(mask_ratio=1.2), "mask_ratio"),
        (lambda: SemanticMasking(num_regions=0), "num_regions"),
        (lambda: SemanticMasking(num_regions=2.5), "num_regions"),
        (lambda: SemanticMasking(random_fraction=-0.1), "random_fraction"),
        (lambda: SemanticMasking(random_fraction=1.5), "random_fraction"),
        (lambda: SemanticMasking(segmenter="felzenszwalb"), "segmenter"),
        (lambda: SemanticMasking(iters=-1), "iters"),
        (lambda: SemanticMasking(pos_weight=-1), "pos_weight"),
        (lambda: GridMasking(mask_ratio=0.6), "mask_ratio"),
        (lambda: BlockMasking(min_patches=0), "min_patches"),
        (lambda: BlockMasking(min_aspect=2.0), "min_aspect"),
        (lambda: ColoredNoiseMasking(color="pink"), "color"),
        (lambda: ColoredNoiseMasking(frequency=0.0), "frequency"),
        (lambda: SemanticInformativeMasking(alpha=-1.0), "alpha"),
        (lambda: SemanticStratifiedMasking(random_fraction=2.0), "random_fraction"),
        (lambda: RandomUnitsMasking(unit=0), "unit"),
        (lambda: SemanticFeaturesMasking(warmup=1.5), "warmup"),
        (lambda: SemanticFeaturesMasking(num_regions=0), "num_regions"),
    ],
)
def test_invalid_parameters_are_config_errors(build_bad, key):
    with pytest.raises(ConfigError, match=key):
        build_bad()


def test_every_masking_config_instantiates_and_masks(compose_cfg):
    names = sorted(p.stem for p in (config_dir() / "masking").glob("*.yaml"))
    assert {
        "random",
        "block",
        "grid",
        "semantic",
        "colored_noise",
        "semantic_informative",
        "semantic_stratified",
        "random_units",
        "semantic_features",
    } <= set(names)
    images = torch.randn(2, 1, 32, 32)
    for name in names:
        cfg = compose_cfg("pretrain", [f"masking={name}"])
        strategy = instantiate(cfg.model.masking)
        assert strategy.name == name and strategy.mask_ratio == 0.75
        m = strategy(images, (8, 8), torch.Generator().manual_seed(0), {"image": images})
        assert int((~m.mask).sum()) == 2 * 16


def test_semantic_options_compose_from_the_command_line(compose_cfg):
    cfg = compose_cfg(
        "pretrain",
        [
            "masking=semantic",
            "masking.segmenter=slic",
            "masking.num_regions=12",
            "masking.random_fraction=0.5",
            "masking.mask_ratio=0.9",
        ],
    )
    s = instantiate(cfg.model.masking)
    assert (s.segmenter, s.num_regions, s.random_fraction, s.mask_ratio) == ("slic", 12, 0.5, 0.9)
    assert "segmenter='slic'" in repr(s) and set(s.data_needs()) == {"segments"}
