"""The instrument study's section of RESULTS.md (run.py --preset cpu-instrument): how well each diagnostic resolves
the controls with a known effect, and what the readings of semantic masking do on the ones that do.

For every model-level number semmae-analyze writes for a pretrained encoder (attn/shallow_*, the head-class counts,
the outlier and semantic-invariance counts, asym/shallow_*) and, where the cell was fine-tuned, every number of the
last point of the fine-tuning series: random's seed spread (the sample std over its seeds) and each arm's effect,
arm − random of the same seed. A diagnostic resolves an arm's effect when at least MIN_SEEDS seeds are paired, every
paired seed agrees in sign, and the mean effect is at least SPREADS of random's seed spreads.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from report import (
    CONTROLS,
    REFERENCE,
    _finite,
    artifact_series,
    attention_figures,
    closing_parts,
    markdown_table,
    paired,
    pm,
    read_task,
)

MIN_SEEDS = 3
SPREADS = 2.0
# the arms whose effect is known (what the diagnostics are tested on), in table order
KNOWN = ("random_registers", "random_gated")
SOURCES = {"attn": "pretrained", "asym": "asymmetry", "ft_end": "fine-tune end"}


def _model_level(metrics: dict, prefix: str) -> dict[str, float]:
    """A results.json's model-level numbers under prefix/ (per-block ones, prefix/block_NN/..., left out)."""
    out = {}
    for key, value in metrics.items():
        head, _, name = key.partition("/")
        if head == prefix and "/" not in name and (v := _finite(value)) is not None:
            out[f"{prefix}/{name}"] = v
    return out


def diagnostics(cell: Path) -> dict[str, float]:
    """Every diagnostic of one cell (<out>/<arm>/seed<k>): analyze's attn/... and asym/... model-level numbers, and
    ft_end/<name> for each number of the fine-tuning series' last point."""
    values: dict[str, float] = {}
    analyze = read_task(cell / "analyze")
    if analyze["status"] == "ok":
        values |= _model_level(analyze["metrics"], "attn") | _model_level(analyze["metrics"], "asym")
    if read_task(cell / "finetune")["status"] == "ok" and (series := artifact_series(cell / "finetune")):
        for name, value in series[-1].items():
            if name not in ("at", "step", "epoch") and (v := _finite(value)) is not None:
                values[f"ft_end/{name}"] = v
    return values


def ordered_keys(values: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    """Every diagnostic any cell has: pretrained, then asymmetry, then fine-tune end; shallow ones first in each."""
    keys = {k for arm in values.values() for cell in arm.values() for k in cell}
    order = list(SOURCES)
    return sorted(keys, key=lambda k: (order.index(k.split("/")[0]), not k.split("/")[1].startswith("shallow_"), k))


def label(key: str) -> str:
    source, _, name = key.partition("/")
    return f"{SOURCES[source]}: {name}"


def spread(values: dict[int, dict[str, float]], key: str) -> float | None:
    """The reference's seed spread of one diagnostic: the sample std over its seeds (None below two seeds)."""
    got = [cell[key] for cell in values.values() if key in cell]
    return statistics.stdev(got) if len(got) > 1 else None


def resolves(diffs: list[float], ref_spread: float | None) -> bool | None:
    """True when every paired seed agrees in sign and |mean| >= SPREADS spreads; None when there are too few seeds
    (or no spread) to say."""
    if len(diffs) < MIN_SEEDS or ref_spread is None:
        return None
    same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    return same_sign and abs(statistics.fmean(diffs)) >= SPREADS * ref_spread


def verdict(answer: bool | None, n: int) -> str:
    if answer is None:
        return f"— ({n} paired seed{'s' if n != 1 else ''})"
    return "**resolves**" if answer else "no"


def silent(values, keys: list[str]) -> list[str]:
    """The diagnostics that read the same value in every cell that has them (e.g. no NOP head anywhere): at this
    scale they cannot tell any two arms apart."""
    out = []
    for key in keys:
        got = [c[key] for arm in values.values() for c in arm.values() if key in c]
        if len(got) > 1 and len(set(got)) == 1:
            out.append(key)
    return out


def effect(values, arm: str, key: str) -> tuple[list[float], str]:
    """arm − random of one diagnostic, seed by seed: the differences and their `mean ± std (signs)` cell."""
    pair = paired(
        {k: c.get(key) for k, c in values[arm].items()}, {k: c.get(key) for k, c in values[REFERENCE].items()}
    )
    if not pair.diffs:
        return [], "—"
    return pair.diffs, f"{pm(pair.diffs, sign=True)} ({pair.signs()})"


def resolving_table(values, keys: list[str], known: list[str], quiet: list[str]) -> tuple[str, dict[str, list[str]]]:
    """Rows: every diagnostic; random's mean ± std and spread, then each known-effect arm's effect and verdict
    (quiet: the silent diagnostics). Also returns, per arm, the diagnostics that resolve it."""
    resolved: dict[str, list[str]] = {a: [] for a in known}
    rows = []
    for key in keys:
        ref = [c[key] for c in values[REFERENCE].values() if key in c]
        s = spread(values[REFERENCE], key)
        row = [label(key), pm(ref) if ref else "—", "—" if s is None else f"{s:.3g}"]
        for arm in known:
            diffs, text = effect(values, arm, key)
            answer = resolves(diffs, s)
            if answer:
                resolved[arm].append(key)
            row += [text, "silent" if key in quiet and diffs else verdict(answer, len(diffs))]
        rows.append(row)
    header = ["diagnostic", f"{REFERENCE} (mean ± std)", f"{REFERENCE}'s seed spread"]
    for arm in known:
        header += [f"{arm} − {REFERENCE}", f"resolves {arm}"]
    return markdown_table(header, rows), resolved


def readings_table(values, keys: list[str], readings: list[str]) -> str:
    """Each reading's effect on the diagnostics that resolve a control, and whether it is an effect by the same
    rule (a reading that moves a diagnostic less than that is within the seed noise)."""
    rows = []
    for key in keys:
        s = spread(values[REFERENCE], key)
        row = [label(key)]
        for arm in readings:
            diffs, text = effect(values, arm, key)
            answer = resolves(diffs, s)
            row.append(text + ("" if answer is None else (" **effect**" if answer else " within the noise")))
        rows.append(row)
    return markdown_table(["diagnostic", *(f"{a} − {REFERENCE}" for a in readings)], rows)


def asymmetry_table(values, keys: list[str], arms: list[str]) -> str:
    """asym/shallow_* per arm (mean ± std over its seeds): each arm's pretraining view (its own masking) against
    the full view of the same images."""
    rows = []
    for key in keys:
        cells = []
        for arm in arms:
            got = [c[key] for c in values[arm].values() if key in c]
            cells.append(pm(got) if got else "—")
        rows.append([key.split("/", 1)[1], *cells])
    return markdown_table(["asymmetry (pretraining view − full view)", *arms], rows)


def section(out: Path, figures: Path, rel: Path, preset: str, arms, seeds, about: str, tasks: tuple[str, ...]) -> str:
    """The instrument study: the resolving-power table, the controls each diagnostic resolves, the readings' effects
    on those diagnostics, the asymmetry under each masking, then wall times and commands."""
    arms = list(arms)
    values = {a: {k: diagnostics(out / a / f"seed{k}") for k in seeds} for a in arms}
    values = {a: {k: v for k, v in cells.items() if v} for a, cells in values.items()}
    done = {a: sorted(values[a]) for a in arms}
    parts = [
        f"## Preset `{preset}`: {', '.join(arms)} x seeds {', '.join(map(str, seeds))}",
        "",
        f"Setting: {about}.",
        "",
        "Cells with diagnostics so far: "
        + "; ".join(f"`{a}` seeds {', '.join(map(str, ks)) or 'none'}" for a, ks in done.items())
        + ".",
        "",
    ]
    if REFERENCE not in arms or len(values[REFERENCE]) < 2:
        parts += [f"No resolving power yet: `{REFERENCE}` needs at least two seeds with diagnostics for a spread.", ""]
    else:
        keys = ordered_keys(values)
        known = [a for a in KNOWN if a in arms]
        quiet = silent(values, keys)
        table, resolved = resolving_table(values, keys, known, quiet)
        parts += [
            f"Resolving power. Every model-level number semmae-analyze writes for the pretrained encoder "
            f"(`attn/...`; asymmetry: `asym/...`, the arm's own masking's pretraining view − the full view) and, "
            f"where the cell was fine-tuned, the last point of its artifact series. {REFERENCE}'s seed spread is "
            f"the sample std over its seeds; an arm's effect is arm − {REFERENCE} of the same seed (mean ± std, "
            f"the seeds that agree in sign). A diagnostic resolves an effect when at least {MIN_SEEDS} seeds are "
            f"paired, all agree in sign and the mean effect is at least {SPREADS:g} of {REFERENCE}'s seed "
            "spreads:",
            "",
            table,
            "",
        ]
        for arm in known:
            got = resolved[arm]
            role = CONTROLS.get(arm, "")
            parts.append(
                f"- `{arm}` ({role}): resolved by {len(got)} of {len(keys)} diagnostics"
                + (": " + ", ".join(f"`{k}`" for k in got) if got else "")
            )
        if quiet:
            parts.append(
                f"- silent at this scale (the same value in every cell): {len(quiet)} of {len(keys)}: "
                + ", ".join(f"`{k}`" for k in quiet)
            )
        parts.append("")
        readings = [a for a in arms if a != REFERENCE and a not in CONTROLS and values[a]]
        sharp = [k for k in keys if any(k in resolved[a] for a in known)]
        if readings and sharp:
            parts += [
                "The readings on the diagnostics that resolve a control (effect: by the same rule; within the "
                "noise: the seeds disagree in sign or the mean is below the rule's spreads):",
                "",
                readings_table(values, sharp, readings),
                "",
            ]
        elif readings:
            parts += ["No diagnostic resolves a control yet, so no reading's effect can be read from one.", ""]
        asym = [k for k in keys if k.startswith("asym/shallow_")]
        if asym:
            parts += [
                "The asymmetry under each masking (shallow blocks; mean ± std over the seeds):",
                "",
                asymmetry_table(values, asym, [a for a in arms if values[a]]),
                "",
            ]
    cells = {a: [{t: read_task(out / a / f"seed{k}" / t) for t in tasks} for k in seeds] for a in arms}
    labels = {a: [f"{a}/seed{k}" for k in seeds] for a in arms}
    parts += attention_figures(out, figures, rel, arms, seeds[0])
    parts += closing_parts(cells, labels, tasks, out)
    return "\n".join(parts)
