"""Figures of attention artifacts: image x block grids of attention maps overlaid on the images, and each
metric versus block depth (one line per encoder, so several checkpoints compare in one plot)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.colors import LogNorm

from semmae.analysis.artifacts import ArtifactMeasurement
from semmae.analysis.metrics import METRICS
from semmae.errors import ConfigError
from semmae.utils.plotting import denormalize, plt, to_hwc


def display_images(images: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """Model-input images [n, C, H, W] -> [0, 1] for display: undo the normalisation when mean/std are known,
    else stretch each image to its own min..max."""
    images = images.detach().float().cpu()
    if mean is not None and std is not None:
        return denormalize(images, mean, std)
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - lo) / (hi - lo).clamp_min(1e-8)


def attention_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    grid_size: tuple[int, int],
    title: str,
    col_titles: Sequence[str] | None = None,
    vmax: float = 8.0,
    colorbar_label: str = "r' (1 = fair share)",
    cmap: str = "coolwarm",
    alpha: float = 0.6,
):
    """Rows = images, columns = blocks: each cell is the image (gray) overlaid with that block's patch map.

    images [n, C, H, W] in [0, 1]; maps [n, L, P] on the patch grid (row-major), in units of the fair share.
    One logarithmic colour scale 1/vmax..vmax for the whole figure, so that blocks compare: the fair share 1 is
    neutral, patches that receive more are red (saturating at vmax), patches that receive less are blue."""
    if not vmax > 1:
        raise ConfigError(
            f"vmax={vmax}: the colour scale runs from 1/vmax to vmax, so vmax must be > 1 (default 2 * tau)"
        )
    n, depth = maps.shape[:2]
    gh, gw = grid_size
    height, width = images.shape[-2:]
    extent = (0, width, height, 0)
    norm = LogNorm(vmin=1.0 / vmax, vmax=vmax)
    fig, axes = plt.subplots(n, depth, figsize=(1.3 * depth + 1.0, 1.3 * n + 0.5), squeeze=False)
    shown = None
    for r in range(n):
        img = to_hwc(images[r])
        for c in range(depth):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, extent=extent)
            cell = maps[r, c].reshape(gh, gw).float().clamp(1.0 / vmax, vmax).cpu().numpy()
            shown = ax.imshow(cell, cmap=cmap, norm=norm, alpha=alpha, extent=extent, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c] if col_titles else f"block {c + 1}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes, shrink=0.8, label=colorbar_label)
        ticks = [t for t in (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16, 32, 64) if 1.0 / vmax <= t <= vmax]
        bar.set_ticks(ticks, labels=[f"{t:g}" if t >= 1 else f"1/{round(1 / t)}" for t in ticks])
        bar.ax.minorticks_off()
    return fig


def block_titles(report: ArtifactMeasurement) -> list[str]:
    return [f"block {i + 1}\nsink {b['sink_ratio']:.1f}" for i, b in enumerate(report.blocks)]


def metrics_vs_depth(reports: Mapping[str, ArtifactMeasurement], title: str = "attention artifacts by block"):
    """One panel per metric, block index (1-based) on x, one line per encoder; shallow blocks shaded."""
    cols = (len(METRICS) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(4 * cols, 6.5), squeeze=False)
    first = next(iter(reports.values()))
    for ax in axes.flat[len(METRICS) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, METRICS):
        lo, hi = min(first.shallow_blocks), max(first.shallow_blocks)
        ax.axvspan(lo - 0.5, hi + 0.5, color="0.92", zorder=0, label="shallow blocks")
        for label, report in reports.items():
            xs = list(range(1, report.depth + 1))
            ax.plot(xs, [b[name] for b in report.blocks], marker="o", ms=3, label=label)
        if name in ("sink_ratio", "norm_ratio"):
            ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        if name == "flat_patch_share":
            ax.axhline(first.settings.flat_fraction, color="0.5", lw=0.8, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("block")
        ax.set_xticks(range(1, max(r.depth for r in reports.values()) + 1))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return fig


SINK_COLOURS = {"none": "0.93", "nop": "tab:blue", "broadcast": "tab:red", "other": "tab:orange"}
SINK_MARKS = {"cls": "o", "register": "s", "patch": "^"}


def sink_class_grid(heads, title: str = "attention sinks by block and head"):
    """Rows = blocks (from 1), columns = heads (from 0); a cell's colour is the head's class (none / NOP / broadcast /
    other), its mark where the head's sink sits (CLS, register, patch) and its text the mean sink mass."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    depth, width = len(heads), max(len(b.classes) for b in heads)
    fig, ax = plt.subplots(figsize=(0.7 * width + 2.6, 0.45 * depth + 1.4))
    for i, block in enumerate(heads):
        for h, (cls, pos) in enumerate(zip(block.classes, block.positions, strict=True)):
            ax.add_patch(_cell(h, i, SINK_COLOURS[cls]))
            if cls != "none":
                ax.plot(h, i, SINK_MARKS[pos], color="white", ms=7, mec="black", mew=0.6)
            ax.text(h + 0.32, i + 0.3, f"{block.mass[h]:.2f}", fontsize=5.5, ha="right", va="bottom", color="0.2")
    ax.set_xlim(-0.5, width - 0.5), ax.set_ylim(depth - 0.5, -0.5)
    ax.set_xticks(range(width)), ax.set_yticks(range(depth), [str(i + 1) for i in range(depth)])
    ax.set_xlabel("head"), ax.set_ylabel("block")
    handles = [Patch(color=c, label=k) for k, c in SINK_COLOURS.items()]
    handles += [
        Line2D([], [], marker=m, ls="", color="white", mec="black", label=f"sink on {k}") for k, m in SINK_MARKS.items()
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _cell(x: int, y: int, colour: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=colour, edgecolor="white", lw=1.5)
