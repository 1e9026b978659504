"""Artifact reports as files: per-block metrics as JSON and as Markdown tables, for one encoder or several
side by side."""

from __future__ import annotations

from collections.abc import Mapping

from semmae.analysis.artifacts import ArtifactMeasurement
from semmae.analysis.metrics import METRICS
from semmae.utils.atomic import atomic_write_json, atomic_write_text


def fmt(name: str, value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if name.endswith(("sink_ratio", "norm_ratio")) else f"{value:.3f}"


def _blocks_text(blocks: list[int]) -> str:
    if len(blocks) == 1:
        return str(blocks[0])
    return (
        f"{blocks[0]}–{blocks[-1]}" if blocks == list(range(blocks[0], blocks[-1] + 1)) else ",".join(map(str, blocks))
    )


def settings_line(report: ArtifactMeasurement) -> str:
    s = report.settings
    return (
        f"{report.num_images} images, {report.grid_size[0]}x{report.grid_size[1]} patches; tau = {s.tau:g}, "
        f"k = {s.k:g}, flat = lowest-std {100 * s.flat_fraction:g}% of patches; blocks numbered from 1; "
        f"shallow = blocks {_blocks_text(report.shallow_blocks)}."
    )


def artifacts_markdown(report: ArtifactMeasurement, title: str) -> str:
    """Rows = blocks (1-based) plus the shallow mean, columns = the metrics of docs/artifacts.md#metrics."""
    lines = [f"# Attention artifacts: {title}", "", settings_line(report), ""]
    lines.append("| block | " + " | ".join(METRICS) + " |")
    lines.append("|---:|" + "---:|" * len(METRICS))
    for i, block in enumerate(report.blocks):
        lines.append(f"| {i + 1} | " + " | ".join(fmt(m, block[m]) for m in METRICS) + " |")
    lines.append(
        f"| shallow ({_blocks_text(report.shallow_blocks)}) | "
        + " | ".join(fmt(m, report.shallow[f"shallow_{m}"]) for m in METRICS)
        + " |"
    )
    return "\n".join(lines) + "\n"


def comparison_markdown(reports: Mapping[str, ArtifactMeasurement]) -> str:
    """One table of the model-level shallow_* numbers (rows = encoders), then one table per metric with
    rows = encoders and columns = blocks."""
    first = next(iter(reports.values()))
    depth = max(r.depth for r in reports.values())
    lines = ["# Attention artifacts compared", "", settings_line(first), "", "## Shallow blocks (model level)", ""]
    lines.append("| encoder | " + " | ".join(f"shallow_{m}" for m in METRICS) + " |")
    lines.append("|---|" + "---:|" * len(METRICS))
    for label, r in reports.items():
        lines.append(f"| {label} | " + " | ".join(fmt(m, r.shallow[f"shallow_{m}"]) for m in METRICS) + " |")
    for m in METRICS:
        lines += ["", f"## {m} by block", ""]
        lines.append("| encoder | " + " | ".join(str(i) for i in range(1, depth + 1)) + " |")
        lines.append("|---|" + "---:|" * depth)
        for label, r in reports.items():
            cells = [fmt(m, r.blocks[i][m] if i < r.depth else None) for i in range(depth)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


write_text = atomic_write_text
write_json = atomic_write_json
