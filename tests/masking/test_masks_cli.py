"""semmae-masks: one figure and the statistics per strategy, in the run directory."""

import json
from pathlib import Path

import pytest
import torch

from semmae.analysis.mask_shapes import flat_patches, mask_statistics
from semmae.cli.masks import run
from semmae.errors import ConfigError

STRATEGIES = [
    "random",
    "block",
    "grid",
    "semantic",
    "colored_noise",
    "semantic_informative",
    "semantic_stratified",
    "random_units",
    "semantic_features",
]


def test_figure_and_statistics_for_every_strategy(compose_cfg, fmnist_root):
    cfg = compose_cfg("masks", [f"dataset.root={fmnist_root}", "num_images=96", "num_shown=3"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    assert (out / "figures" / "masks.png").stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    stats = results["strategies"]
    assert list(stats) == STRATEGIES
    assert results["images"] == 96 and results["grid"] == [8, 8]
    assert results["flat_threshold"] == 0.1  # semantic's flat_threshold, the one flat_last uses
    for s in stats.values():
        assert s["visible_patches"] == 16
        assert 0 <= s["visible_flat_fraction"] <= 1
        assert 0 <= s["regions_fully_visible_fraction"] <= 1
        assert 0 < s["position_visibility_min_max_ratio"] <= 1
        assert len(s["position_visibility"]) == 8
    assert stats["grid"]["visible_components_mean"] == 16.0  # one isolated patch per 2x2 cell
    assert stats["semantic"]["visible_components_mean"] < stats["random"]["visible_components_mean"]
    assert stats["semantic"]["regions_fully_visible_fraction"] > stats["random"]["regions_fully_visible_fraction"]
    assert stats["semantic"]["regions_partially_visible_mean"] <= 1 + 4  # one semantic + up to 4 random patches
    assert stats["random_units"]["visible_components_mean"] <= 4  # 16 visible patches = 4 whole 2x2 units
    assert stats["semantic_stratified"]["progress"] == 0.0  # drawn at the start of training
    assert "progress" not in stats["semantic"]
    assert stats["semantic_features"]["progress"] == 0.1  # the end of its warm-up: its own regions, not random's
    assert stats["semantic_features"]["visible_components_mean"] < stats["random"]["visible_components_mean"]
    # every region shows a piece at progress 0: more, smaller visible components than semantic's whole regions
    assert stats["semantic_stratified"]["visible_components_mean"] > stats["semantic"]["visible_components_mean"]


def half_flat_images() -> torch.Tensor:
    """Two copies of a 32x32 image: the left half constant, the right half noise (grid 8x8 of 4-pixel patches)."""
    img = torch.zeros(1, 32, 32)
    img[:, :, 16:] = torch.randn(1, 32, 16, generator=torch.Generator().manual_seed(0))
    return torch.stack([img, img])


def test_visible_flat_fraction_counts_flat_visible_patches():
    images, grid = half_flat_images(), (8, 8)
    flat = flat_patches(images, grid, 0.1)
    left = (torch.arange(64) % 8 < 4).expand(2, 64)
    assert torch.equal(flat, left)  # constant patches flat, noise patches not
    regions = torch.arange(64).expand(2, 64)
    hide_right, hide_left = ~left, left
    assert mask_statistics(hide_right, regions, grid, flat)["visible_flat_fraction"] == 1.0  # only flat ones shown
    assert mask_statistics(hide_left, regions, grid, flat)["visible_flat_fraction"] == 0.0
    mixed = torch.stack([hide_right[0], hide_left[1]])
    assert mask_statistics(mixed, regions, grid, flat)["visible_flat_fraction"] == 0.5
    half = hide_right.clone()
    half[:, [0, 8]] = True  # hide 2 flat patches of 32 visible: 30 of 30 visible still flat
    half[:, [4, 12]] = False  # show 2 noise patches: 30 of 32 visible flat
    assert mask_statistics(half, regions, grid, flat)["visible_flat_fraction"] == round(30 / 32, 4)
    assert "visible_flat_fraction" not in mask_statistics(hide_right, regions, grid)


def test_flat_patches_use_the_threshold_relative_to_the_image():
    images = half_flat_images()
    images[:, :, :, :16] = 0.02 * torch.randn(2, 1, 32, 16, generator=torch.Generator().manual_seed(1))
    left = (torch.arange(64) % 8 < 4).expand(2, 64)
    assert torch.equal(flat_patches(images, (8, 8), 0.1), left)  # faint texture: std ~0.03 x the image's
    assert not flat_patches(images, (8, 8), 0.01).any()
    assert torch.equal(flat_patches(5 * images + 3, (8, 8), 0.1), left)  # scale- and shift-invariant


def test_given_segments_and_a_common_ratio(compose_cfg, fmnist_root):
    cfg = compose_cfg(
        "masks",
        [
            f"dataset.root={fmnist_root}",
            "num_images=32",
            "num_shown=2",
            "show=[semantic,random]",
            "strategies.semantic.segmenter=given",
            "dataset.segments=foreground",
            "mask_ratio=0.5",
        ],
    )
    stats = run(cfg)
    assert list(stats) == ["semantic", "random"]
    assert all(s["visible_patches"] == 32 for s in stats.values())
    assert "segmenter='given'" in stats["semantic"]["strategy"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["show=[random,nope]"], "nope"),
        (["show=[semantic]", "strategies.semantic.segmenter=given"], "dataset.segments=foreground"),
        (["mask_ratio=0.6"], "masking=grid"),
    ],
)
def test_bad_requests_are_config_errors(compose_cfg, fmnist_root, overrides, match):
    cfg = compose_cfg("masks", [f"dataset.root={fmnist_root}", "num_images=8", *overrides])
    with pytest.raises(Exception) as info:
        run(cfg)
    from semmae.errors import find_semmae_error

    err = find_semmae_error(info.value)
    assert isinstance(err, ConfigError) and match in str(err)
