"""How many patches stay visible: MAE's len_keep = int(N (1 - mask_ratio)) by default (masking.visible_count=official),
round(...) on request; counts of 0 or N, unknown values, non-numbers and more regions than patches are refused."""

import pytest
import torch
from hydra.utils import instantiate

from semmae.cli import one_line
from semmae.errors import ConfigError
from semmae.masking import BlockMasking, ColoredNoiseMasking, GridMasking, RandomMasking, SemanticMasking
from semmae.masking.base import num_keep
from tests.tasks.test_pretrain import TINY


@pytest.mark.parametrize(
    "n,ratio,official,rounded",
    [
        (196, 0.9, 19, 20),  # ViT-B/16 at 0.9: 196 x 0.1 = 19.6
        (196, 0.75, 49, 49),
        (64, 0.75, 16, 16),
        (64, 0.9, 6, 6),  # 6.4
        (100, 0.9, 9, 10),  # 100 x (1 - 0.9) = 9.999999999999998: MAE's int() gives 9
        (50, 0.9, 4, 5),  # 4.999999999999999
        (64, 0.005, 63, None),  # 63.68: round keeps all 64
        (10, 0.9, None, 1),  # 0.9999999999999998: MAE's int() gives 0
    ],
)
def test_hand_computed_counts(n, ratio, official, rounded):
    for rule, want in (("official", official), ("round", rounded)):
        if want is None:
            with pytest.raises(ConfigError, match=r"^masking\.mask_ratio="):
                num_keep(n, ratio, rule)
        else:
            assert num_keep(n, ratio, rule) == want, rule


def test_refusals_say_why_in_one_line():
    with pytest.raises(ConfigError) as none_visible:
        num_keep(10, 0.9)
    assert str(none_visible.value) == (
        "masking.mask_ratio=0.9 keeps 0 of 10 patches visible (official: "
        "int(10 x (1 - 0.9))), so no patch is visible: choose a ratio that keeps 1 to 9"
    )
    with pytest.raises(ConfigError, match="nothing is masked and the loss is 0") as all_visible:
        num_keep(64, 0.005, "round")
    assert "keeps 64 of 64" in str(all_visible.value) and "\n" not in str(all_visible.value)
    with pytest.raises(ConfigError, match="nothing is masked"):
        num_keep(64, 1e-17)  # 1 - 1e-17 == 1.0 in floats: even int() keeps all


@pytest.mark.parametrize("rule,visible", [("official", 19), ("round", 20)])
def test_every_strategy_keeps_exactly_that_many(rule, visible):
    images = torch.randn(4, 3, 28, 28)
    grid = (14, 14)
    strategies = [
        RandomMasking(0.9, visible_count=rule),
        BlockMasking(0.9, visible_count=rule),
        SemanticMasking(0.9, visible_count=rule),
        ColoredNoiseMasking(0.9, visible_count=rule),
    ]
    for strategy in strategies:
        m = strategy(images, grid, torch.Generator().manual_seed(0), {"image": images})
        assert torch.all((~m.mask).sum(1) == visible) and m.ids_keep.shape == (4, visible), strategy
    # grid masking needs 1 - 1/s^2: at s = 3 on 14x14, 196 / 9 = 21.78 -> 21 (official) or 22 (round)
    m = GridMasking(1 - 1 / 9, visible_count=rule)(images, grid, torch.Generator().manual_seed(0))
    assert torch.all((~m.mask).sum(1) == visible + 2)


def test_the_configs_default_to_the_official_count(compose_cfg):
    for name in ("random", "block", "grid", "semantic", "colored_noise"):
        strategy = instantiate(compose_cfg("pretrain", [f"masking={name}"]).model.masking)
        assert strategy.visible_count == "official" and strategy.n_keep(196) == 49
    strategy = instantiate(compose_cfg("pretrain", ["masking.mask_ratio=0.9"]).model.masking)
    assert strategy.n_keep(196) == 19 and "visible_count='official'" in repr(strategy)
    cfg = compose_cfg("pretrain", ["masking.mask_ratio=0.9", "masking.visible_count=round"])
    strategy = instantiate(cfg.model.masking)
    assert strategy.n_keep(196) == 20


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["masking.mask_ratio=abc"], "masking.mask_ratio must be a number, got 'abc'"),
        (["masking.visible_count=floor"], "masking.visible_count must be official or round, got 'floor'"),
        (
            ["masking.mask_ratio=0.005", "masking.visible_count=round"],
            "masking.mask_ratio=0.005 keeps 64 of 64 patches visible (round: round(64 x (1 - 0.005))), "
            "so nothing is masked "
            "and the loss is 0: choose a ratio that keeps 1 to 63",
        ),
        (
            ["masking=semantic", "masking.num_regions=100000"],
            "masking.num_regions=100000 is more than the 64 patches of the 8x8 patch grid: choose at most 64",
        ),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key_when_the_model_is_built(compose_cfg, overrides, message):
    cfg = compose_cfg("pretrain", [*TINY, *overrides])
    with pytest.raises(Exception) as info:
        instantiate(cfg.model)
    assert one_line(info.value) == message


def test_more_regions_than_patches_is_refused_at_first_use_too():
    images, segments = torch.randn(2, 1, 32, 32), torch.zeros(2, 8, 8)
    for segmenter in ("color_kmeans", "slic"):
        with pytest.raises(ConfigError, match="masking.num_regions=65 is more than the 64 patches"):
            SemanticMasking(num_regions=65, segmenter=segmenter)(images, (8, 8), None, {"segments": segments})
    m = SemanticMasking(num_regions=64)(images, (8, 8), torch.Generator().manual_seed(0))
    assert torch.all((~m.mask).sum(1) == 16)
    m = SemanticMasking(num_regions=100, segmenter="given")(images, (8, 8), None, {"segments": segments})
    assert torch.all((~m.mask).sum(1) == 16)  # `given` reads the dataset's maps: num_regions is not used
