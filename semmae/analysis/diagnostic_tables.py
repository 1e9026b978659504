"""The diagnostics as Markdown: one section per diagnostic for an encoder's artifacts.md, a model-level table for
several encoders side by side, and the per-part times."""

from __future__ import annotations

from collections.abc import Mapping

from semmae.analysis.cls_stats import STATS
from semmae.analysis.diagnostics import Diagnosis
from semmae.analysis.head_sinks import CLASSES, POSITIONS

ASYM_SHOWN = (
    "sink_ratio",
    "prefix_share",
    "attention_entropy",
    "cls_cls",
    "patches_cls",
    "patch_self",
    "sink_mass",
    "norm_ratio",
)
COUNTS = ("nop_heads", "broadcast_heads", "other_heads", "si_count")
MODEL_LEVEL = (
    "nop_heads",
    "broadcast_heads",
    "other_heads",
    "shallow_cls_cls",
    "shallow_patches_cls",
    "shallow_branch_ratio_cls",
    "outlier_fraction",
    "si_count",
    "si_top",
)


def _f(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and abs(value) >= 1e4:
        return f"{value:.2e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def heads_section(d: Diagnosis) -> list[str]:
    t = d.settings.sinks
    lines = [
        "## Head sinks",
        "",
        f"Per head and image: sink = most-attended key (prefix included); an event when >= {t.event:g} of the "
        f"queries give it >= {t.route:g}; NOP when ||u_sink|| / mean ||u_other|| <= {t.nop_ratio:g}, broadcast "
        f"when >= {t.broadcast_ratio:g} and the update's stable rank <= {t.broadcast_rank:g}. A head takes its "
        "most frequent class over the images; heads numbered from 0.",
        "",
        "| block | "
        + " | ".join(f"{c} heads" for c in CLASSES[1:])
        + " | "
        + " | ".join(f"sinks on {p}" for p in POSITIONS)
        + " | mean sink mass | classes by head |",
        "|---:|" + "---:|" * (len(CLASSES) - 1 + len(POSITIONS) + 1) + "---|",
    ]
    for i, b in enumerate(d.heads):
        c = b.counts()
        cells = [str(c[f"{k}_heads"]) for k in CLASSES[1:]] + [str(c[f"sinks_on_{p}"]) for p in POSITIONS]
        by_head = " ".join(f"{k}@{p}" if k != "none" else "-" for k, p in zip(b.classes, b.positions, strict=True))
        lines.append(f"| {i + 1} | " + " | ".join(cells) + f" | {b.scalars()['sink_mass']:.3f} | {by_head} |")
    return lines + [""]


def cls_section(d: Diagnosis) -> list[str]:
    lines = [
        "## CLS statistics",
        "",
        "Means over images and heads; entropies over the patch keys, divided by log P; branch ratio = ||attention "
        "branch|| / ||residual stream it is added to||.",
        "",
        "| block | " + " | ".join(STATS) + " |",
        "|---:|" + "---:|" * len(STATS),
    ]
    for i, c in enumerate(d.cls):
        lines.append(f"| {i + 1} | " + " | ".join(_f(c[s]) for s in STATS) + " |")
    return lines + [""]


def outliers_section(d: Diagnosis) -> list[str]:
    o, s = d.outliers, d.settings.outliers
    rule = f"norm > {s.norm:g}" if s.norm is not None else f"norm > {s.ratio:g} x the image's median patch norm"
    lines = [
        "## High-norm outliers and register neurons",
        "",
        f"Detection block {o['detection_block']} ({rule}): {100 * o['outlier_fraction']:.2f}% of patch tokens, "
        f"in {100 * o['images_with_outliers']:.1f}% of images"
        + (f", {o['outlier_norm_ratio']:.1f}x the median on average" if o["outlier_norm_ratio"] else "")
        + (f", most often at patches {o['outlier_positions']}" if o["outlier_positions"] else "")
        + ".",
        "",
    ]
    if d.register_neurons:
        lines += [
            "| rank | block | neuron | mean abs activation at outliers | elsewhere |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r + 1} | {n['block']} | {n['neuron']} | {n['score']:.3f} | {n['elsewhere']:.3f} |"
            for r, n in enumerate(d.register_neurons)
        ]
    else:
        lines.append("No outliers, so no register neurons.")
    return lines + [""]


def invariance_section(d: Diagnosis) -> list[str]:
    inv = d.invariance
    lines = [
        "## Semantic invariance",
        "",
        f"Patch tokens at the {inv.where.replace('_', ' ')}; {inv.num_real} real and {inv.num_synthetic} "
        f"content-free images; {int(inv.scored.sum())} components scored; "
        f"**{inv.count()} with s >= {inv.threshold:g}** (coin flips give 0.707).",
        "",
        "| component (by variance) | s | share of variance |",
        "|---:|---:|---:|",
    ]
    lines += [
        f"| {t['component']} | {t['score']:.3f} | {t['variance']:.4f} |" for t in inv.top(d.settings.invariance.top)
    ]
    return lines + [""]


def asymmetry_section(d: Diagnosis) -> list[str]:
    a = d.asymmetry
    shown = [m for m in ASYM_SHOWN if m in a.difference[0]]
    lines = [
        "## Asymmetry: pretraining view - full view",
        "",
        f"{a.masking}, {a.visible_patches} visible patches ({a.tokens['pretraining']} tokens vs "
        f"{a.tokens['full']}); every share relative to its fair share in its own view (all metrics in "
        "artifacts.json).",
        "",
        "| block | " + " | ".join(shown) + " |",
        "|---:|" + "---:|" * len(shown),
    ]
    for i, diff in enumerate(a.difference):
        lines.append(f"| {i + 1} | " + " | ".join(f"{diff[m]:+.3f}" for m in shown) + " |")
    lines.append("| shallow | " + " | ".join(_f(a.shallow.get(f"shallow_{m}")) for m in shown) + " |")
    return lines + [""]


def timings_line(d: Diagnosis) -> str:
    parts = ", ".join(f"{k} {v:.1f}" for k, v in d.timings.items())
    return f"Times (s): {parts}; total {sum(d.timings.values()):.1f}"


def diagnostics_markdown(d: Diagnosis) -> str:
    """The sections after the artifact table of an encoder's artifacts.md."""
    lines: list[str] = [""]
    if d.heads is not None:
        lines += heads_section(d)
    if d.cls is not None:
        lines += cls_section(d)
    if d.outliers is not None:
        lines += outliers_section(d)
    if d.invariance is not None:
        lines += invariance_section(d)
    if d.asymmetry is not None:
        lines += asymmetry_section(d)
    lines += [timings_line(d), ""]
    return "\n".join(lines)


def diagnostics_comparison(diagnoses: Mapping[str, Diagnosis]) -> str:
    """Rows = encoders, columns = the model-level diagnostics and the shallow asymmetry of the shown metrics."""
    scalars = {label: d.scalars() for label, d in diagnoses.items()}
    cols = [c for c in MODEL_LEVEL if any(f"attn/{c}" in s for s in scalars.values())]
    asym = [m for m in ASYM_SHOWN if any(f"asym/shallow_{m}" in s for s in scalars.values())]
    lines = [
        "",
        "## Diagnostics (model level)",
        "",
        "| encoder | " + " | ".join(cols + [f"asym shallow {m}" for m in asym]) + " |",
        "|---|" + "---:|" * (len(cols) + len(asym)),
    ]
    for label, s in scalars.items():
        cells = [_f(s.get(f"attn/{c}"), 0 if c in COUNTS else 3) for c in cols]
        cells += [_f(s.get(f"asym/shallow_{m}")) for m in asym]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
