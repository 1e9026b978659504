"""semmae-masks: one figure and the statistics per strategy, in the run directory."""

import json
from pathlib import Path

import pytest

from semmae.errors import ConfigError
from semmae.cli.masks import run


def test_figure_and_statistics_for_every_strategy(compose_cfg, fmnist_root):
    cfg = compose_cfg("masks", [f"dataset.root={fmnist_root}", "num_images=96", "num_shown=3"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    assert (out / "figures" / "masks.png").stat().st_size > 10_000
    results = json.loads((out / "results.json").read_text())
    stats = results["strategies"]
    assert list(stats) == ["random", "block", "grid", "semantic", "colored_noise"]
    assert results["images"] == 96 and results["grid"] == [8, 8]
    for s in stats.values():
        assert s["visible_patches"] == 16
        assert 0 <= s["regions_fully_visible_fraction"] <= 1
        assert 0 < s["position_visibility_min_max_ratio"] <= 1
        assert len(s["position_visibility"]) == 8
    assert stats["grid"]["visible_components_mean"] == 16.0  # one isolated patch per 2x2 cell
    assert stats["semantic"]["visible_components_mean"] < stats["random"]["visible_components_mean"]
    assert stats["semantic"]["regions_fully_visible_fraction"] > stats["random"]["regions_fully_visible_fraction"]
    assert stats["semantic"]["regions_partially_visible_mean"] <= 1 + 4  # one semantic + up to 4 random patches


def test_given_segments_and_a_common_ratio(compose_cfg, fmnist_root):
    cfg = compose_cfg("masks", [f"dataset.root={fmnist_root}", "num_images=32", "num_shown=2", "show=[semantic,random]",
                                "strategies.semantic.segmenter=given", "dataset.segments=foreground",
                                "mask_ratio=0.5"])
    stats = run(cfg)
    assert list(stats) == ["semantic", "random"]
    assert all(s["visible_patches"] == 32 for s in stats.values())
    assert "segmenter='given'" in stats["semantic"]["strategy"]


@pytest.mark.parametrize("overrides,match", [
    (["show=[random,nope]"], "nope"),
    (["show=[semantic]", "strategies.semantic.segmenter=given"], "dataset.segments=foreground"),
    (["mask_ratio=0.6"], "masking=grid"),
])
def test_bad_requests_are_config_errors(compose_cfg, fmnist_root, overrides, match):
    cfg = compose_cfg("masks", [f"dataset.root={fmnist_root}", "num_images=8", *overrides])
    with pytest.raises(Exception) as info:
        run(cfg)
    from semmae.errors import find_semmae_error

    err = find_semmae_error(info.value)
    assert isinstance(err, ConfigError) and match in str(err)
