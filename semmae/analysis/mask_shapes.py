"""What the shape of a mask says, and a picture of it: the statistics `semmae-masks` reports per strategy (4-connected
visible components, regions fully visible, per-position visibility, visible flat background) and the figure of
masks side by side."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from semmae.masking.components import count_components
from semmae.masking.regions import flat_regions
from semmae.utils.plotting import denormalize, plt, save_figure, to_hwc

HIDDEN_TINT = torch.tensor([0.55, 0.6, 0.75])  # hidden patches: the image faded into slate grey


def flat_patches(images: torch.Tensor, grid: tuple[int, int], threshold: float) -> torch.Tensor:
    """[B, N] bool: the patch is flat background, flat_last's test (semmae.masking.regions.flat_regions) applied to
    every patch on its own (each patch its own region)."""
    n = grid[0] * grid[1]
    own = torch.arange(n, device=images.device).expand(images.shape[0], n)
    return flat_regions(images, own, grid, threshold)


def mask_statistics(
    mask: torch.Tensor, regions: torch.Tensor, grid: tuple[int, int], flat: torch.Tensor | None = None
) -> dict[str, Any]:
    """flat [M, N] bool (flat_patches), when given, adds visible_flat_fraction: the share of all visible patches
    that are flat."""
    visible = ~mask
    m, n = visible.shape
    components = count_components(visible, grid).float()
    is_region = regions == torch.arange(n)
    size = torch.zeros(m, n).scatter_add(1, regions, torch.ones(m, n))
    shown = torch.zeros(m, n).scatter_add(1, regions, visible.float())
    full = (is_region & (shown == size)).sum(1).float()
    partial = (is_region & (shown > 0) & (shown < size)).sum(1).float()
    freq = visible.float().mean(0)
    extra = {}
    if flat is not None:
        shown_flat = (visible & flat.to(visible.device)).sum().float()
        extra["visible_flat_fraction"] = round((shown_flat / visible.sum().clamp_min(1)).item(), 4)
    return {
        "visible_patches": int(visible[0].sum()),
        "visible_components_mean": round(components.mean().item(), 3),
        "visible_components_std": round(components.std().item(), 3) if m > 1 else 0.0,
        "regions_mean": round(is_region.sum(1).float().mean().item(), 3),
        "regions_fully_visible_fraction": round((full.sum() / is_region.sum()).item(), 4),
        "regions_partially_visible_mean": round(partial.mean().item(), 3),
        "position_visibility_min": round(freq.min().item(), 4),
        "position_visibility_max": round(freq.max().item(), 4),
        "position_visibility_min_max_ratio": round((freq.min() / freq.max().clamp_min(1e-12)).item(), 4),
        **extra,
        "position_visibility": [[round(v, 4) for v in row] for row in freq.reshape(grid).tolist()],
    }


def region_image(regions: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Region ids [N] -> [h, w] of small consecutive numbers (0, 1, ... in order of first appearance)."""
    _, inverse = torch.unique(regions, return_inverse=True)
    return inverse.reshape(grid).numpy()


def masks_figure(images, results: dict[str, dict[str, Any]], stats, grid, patch: int, mean, std, path):
    """Rows = images, columns = strategies (visible patches show the image, hidden ones are greyed); a strategy
    whose results carry own_regions (the semantic strategies) also gets a column with its region map, once per
    distinct map."""
    shown = denormalize(images.float(), mean, std)
    columns: list[tuple[str, str]] = [("image", "")]
    drawn: list[torch.Tensor] = []  # region maps already given a column
    for name in results:
        columns.append((name, "mask"))
        if results[name].get("own_regions"):
            regions = results[name]["regions"]
            if not any(torch.equal(regions, other) for other in drawn):
                columns.append((name, "regions"))
                drawn.append(regions)
    rows = shown.shape[0]
    # 1.8 in per column: room for the longest titles (semantic_informative) beside each other
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.8 * len(columns), 1.5 * rows + 0.3), squeeze=False)
    for c, (name, kind) in enumerate(columns):
        for r in range(rows):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if kind == "":
                ax.imshow(to_hwc(shown[r]), cmap="gray", vmin=0, vmax=1)
                continue
            if kind == "regions":
                ax.imshow(region_image(results[name]["regions"][r], grid), cmap="tab20", interpolation="nearest")
                continue
            hidden = results[name]["mask"][r].reshape(grid).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
            img = shown[r].expand(3, -1, -1)
            greyed = torch.where(hidden, 0.3 * img + 0.7 * HIDDEN_TINT.view(3, 1, 1), img)
            ax.imshow(to_hwc(greyed), vmin=0, vmax=1)
        if kind == "":
            title = "image"
        elif kind == "regions":
            title = f"{name} regions"
        else:
            at = f"\nat progress {stats[name]['progress']:g}" if "progress" in stats[name] else ""
            title = (
                f"{name}{at}\n{stats[name]['visible_components_mean']:.1f} comp., "
                f"{100 * stats[name]['visible_flat_fraction']:.0f}% flat"
            )
        axes[0, c].set_title(title, fontsize=7)
    return save_figure(fig, path)
