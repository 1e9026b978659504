"""RESULTS.md of the replication study, from the results.json / artifacts.json / runner.json files run.py left in the
study directory; nothing here is typed in by hand. Each preset (and its ablation) owns one marked section of the
file, so a cpu run, a gpu run and the ablation can land in the same RESULTS.md and a hand-written reading stays.

    python experiments/semantic_vs_random/run.py --preset cpu --report-only     # rewrite from what is there
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STUDY = "$STUDY"  # stands for the study directory (run.py --out) in commands when it lies outside the repository
# run.py's cells: FLOOR, a randomly initialised encoder probed and analysed, the floor every probe is read against
# (docs/masking.md#comparing-strategies); TASKS, the tasks of the main study's cells
FLOOR = "random_init"
TASKS = ("pretrain", "linprobe", "finetune", "segment", "analyze")
# (column, task, metric key, scale): the table of the main study.
MAIN_COLUMNS = [
    ("linear probe top-1 %", "linprobe", "test/top1", 100.0),
    ("fine-tune top-1 %", "finetune", "test/top1", 100.0),
    ("mIoU %", "segment", "test/mIoU", 100.0),
    ("shallow sink ratio", "analyze", "attn/shallow_sink_ratio", 1.0),
    ("shallow artifact fraction", "analyze", "attn/shallow_artifact_fraction", 1.0),
    ("shallow high-norm fraction", "analyze", "attn/shallow_high_norm_fraction", 1.0),
    ("fine-tuned: shallow sink ratio", "finetune", "attn/shallow_sink_ratio", 1.0),
    ("fine-tuned: shallow artifact fraction", "finetune", "attn/shallow_artifact_fraction", 1.0),
    ("fine-tuned: shallow high-norm fraction", "finetune", "attn/shallow_high_norm_fraction", 1.0),
    ("shallow prefix share", "analyze", "attn/shallow_prefix_share", 1.0),  # after the older columns: their
    ("shallow norm ratio", "analyze", "attn/shallow_norm_ratio", 1.0),  # positions stay as they were
    ("fine-tuned: shallow prefix share", "finetune", "attn/shallow_prefix_share", 1.0),
    ("fine-tuned: shallow norm ratio", "finetune", "attn/shallow_norm_ratio", 1.0),
]
# The field's diagnostics (docs/artifacts.md#diagnostics), in a table of their own when the analyze runs have them.
DIAGNOSTIC_COLUMNS = [
    ("NOP heads", "analyze", "attn/nop_heads", 1.0),
    ("broadcast heads", "analyze", "attn/broadcast_heads", 1.0),
    ("shallow CLS->CLS", "analyze", "attn/shallow_cls_cls", 1.0),
    ("shallow patches->CLS", "analyze", "attn/shallow_patches_cls", 1.0),
    ("outlier fraction", "analyze", "attn/outlier_fraction", 1.0),
    ("SI count >= 0.75", "analyze", "attn/si_count", 1.0),
    ("asym: shallow sink ratio", "analyze", "asym/shallow_sink_ratio", 1.0),
    ("asym: shallow prefix share", "analyze", "asym/shallow_prefix_share", 1.0),
]
# The readings study (run.py --preset cpu-readings): every value of a cell under one key (cell_values).
# SERIES_METRICS: the shallow_* metrics read after pretraining (semmae-analyze) and along fine-tuning (its series).
SERIES_METRICS = ("sink_ratio", "prefix_share", "norm_ratio", "high_norm_fraction")
SERIES_LABELS = {
    "sink_ratio": "sink ratio",
    "prefix_share": "prefix share",
    "norm_ratio": "norm ratio",
    "high_norm_fraction": "high-norm fraction",
}
# (column, cell_values key, task it comes from, scale)
READINGS_COLUMNS = [
    ("probe CLS top-1 %", "linprobe", "linprobe", 100.0),
    ("probe mean top-1 %", "linprobe_avg", "linprobe_avg", 100.0),
    ("probe EP top-1 %", "probe_ep", "probe_ep", 100.0),
    ("k-NN top-1 %", "knn", "knn", 100.0),
    ("fine-tune top-1 %", "finetune", "finetune", 100.0),
    *((f"pretrained: {SERIES_LABELS[m]}", f"analyze/{m}", "analyze", 1.0) for m in SERIES_METRICS),
    *((f"fine-tune start: {SERIES_LABELS[m]}", f"ft_start/{m}", "finetune", 1.0) for m in SERIES_METRICS),
    *((f"fine-tune end: {SERIES_LABELS[m]}", f"ft_end/{m}", "finetune", 1.0) for m in SERIES_METRICS),
]
# (row, cell_values key, scale, relative difference shown): the paired differences against random, seed by seed
PAIRED_METRICS = [
    ("probe CLS top-1 (points)", "linprobe", 100.0, False),
    ("probe mean top-1 (points)", "linprobe_avg", 100.0, False),
    ("probe EP top-1 (points)", "probe_ep", 100.0, False),
    ("k-NN top-1 (points)", "knn", 100.0, False),
    ("fine-tune top-1 (points)", "finetune", 100.0, False),
    ("fine-tune-time shallow sink ratio (end of series)", "ft_end/sink_ratio", 1.0, True),
    ("pretrained shallow sink ratio (analyze)", "analyze/sink_ratio", 1.0, True),
    ("pretrained shallow prefix share", "analyze/prefix_share", 1.0, False),
    ("pretrained shallow norm ratio", "analyze/norm_ratio", 1.0, False),
]
REFERENCE = "random"  # the arm every other one is paired with, seed by seed
# The study's decision rule: a reading qualifies if it lowers the fine-tuning-time shallow sink ratio against random
# in every confirmation seed (at least RULE_MIN_SEEDS of them), by at least RULE_MIN_SINK_DROP_PCT % on average, and
# loses at most RULE_MAX_PROBE_LOSS linear-probe (CLS) points on average.
RULE_MIN_SEEDS = 3
RULE_MIN_SINK_DROP_PCT = 15.0
RULE_MAX_PROBE_LOSS = 0.3
RULE_SINK, RULE_PROBE = "ft_end/sink_ratio", "linprobe"
# Arms the rule is applied to for comparison only: they are controls, not readings of semantic masking, so the outcome
# never makes one of them what masking=semantic means.
CONTROLS = {
    "random_registers": "the control with a known effect",
    "random_gated": "the gated-attention control",
    "random_units": "a contiguity control",
    "block": "a contiguity control",
}
ABLATION_COLUMNS = [
    ("linear probe top-1 %", "linprobe", "test/top1", 100.0),
    ("shallow sink ratio", "analyze", "attn/shallow_sink_ratio", 1.0),
    ("shallow artifact fraction", "analyze", "attn/shallow_artifact_fraction", 1.0),
    ("shallow high-norm fraction", "analyze", "attn/shallow_high_norm_fraction", 1.0),
    ("online probe %", "pretrain", "val/online_probe_acc", 100.0),
    ("shallow prefix share", "analyze", "attn/shallow_prefix_share", 1.0),
    ("shallow norm ratio", "analyze", "attn/shallow_norm_ratio", 1.0),
]


# --- reading ----------------------------------------------------------------------------------------------------
def read_task(run_dir: Path) -> dict:
    """{"status": ok|failed|missing, "metrics", "error", "wall_s", "command"} of one task's run directory."""
    out: dict = {"status": "missing", "metrics": {}, "error": None, "wall_s": None, "command": None}
    runner = run_dir / "runner.json"
    if runner.is_file():
        rec = json.loads(runner.read_text())
        out.update(error=rec.get("error"), wall_s=rec.get("wall_s"), command=rec.get("command"))
        if rec.get("error"):
            out["status"] = "failed"
    results = run_dir / "results.json"
    if results.is_file():
        out.update(status="ok", error=None, metrics=json.loads(results.read_text()).get("metrics", {}))
    return out


def metric(task: dict, key: str) -> float | None:
    """A metric of an ok task; test/... falls back to val/... (a run without a test split reports val only)."""
    if task["status"] != "ok":
        return None
    for k in (key, key.replace("test/", "val/", 1)):
        v = task["metrics"].get(k)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
    return None


def artifact_series(run_dir: Path) -> list[dict]:
    """The fine-tuning run's artifact series (results.json "artifact_series": entries {"at", "step", "epoch",
    "shallow_sink_ratio", ...}, from before the first step to the end); [] without one."""
    path = run_dir / "results.json"
    if not path.is_file():
        return []
    series = json.loads(path.read_text()).get("artifact_series") or []
    return sorted(series, key=lambda entry: entry.get("step", 0))


def _finite(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def cell_values(cell: Path) -> dict[str, float | None]:
    """Every number of a readings cell (<out>/<arm>/seed<k>) under its READINGS_COLUMNS key: the probes' (linear on
    CLS and mean token, EP, k-NN) and the fine-tuning's top-1, analyze's shallow_* after pretraining, and the first
    (ft_start/...) and last (ft_end/...)
    point of the fine-tuning series (ft_end falls back to the run's final attn/shallow_* without a series)."""
    probes = ("linprobe", "linprobe_avg", "probe_ep", "knn", "finetune")
    tasks = {t: read_task(cell / t) for t in (*probes, "analyze")}
    values = {t: metric(tasks[t], "test/top1") for t in probes}
    series = artifact_series(cell / "finetune") if tasks["finetune"]["status"] == "ok" else []
    for m in SERIES_METRICS:
        values[f"analyze/{m}"] = metric(tasks["analyze"], f"attn/shallow_{m}")
        values[f"ft_start/{m}"] = _finite(series[0].get(f"shallow_{m}")) if series else None
        values[f"ft_end/{m}"] = (
            _finite(series[-1].get(f"shallow_{m}")) if series else metric(tasks["finetune"], f"attn/shallow_{m}")
        )
    return values


# --- portable text: no absolute path of the machine the study ran on ---------------------------------------------
def _path_swaps(out: Path | None, repo: Path = REPO) -> list[tuple[str, str]]:
    """(absolute prefix, replacement) pairs: a study directory outside the repository becomes $STUDY, the repository
    itself the empty prefix (paths relative to its root); the longest prefix first, so the closest one wins."""
    repo_abs = {str(repo), str(repo.resolve())}
    swaps = [(r, "") for r in repo_abs]
    if out is not None:
        for study in {os.path.abspath(out), str(Path(out).resolve())}:
            if not any(study == r or study.startswith(r + os.sep) for r in repo_abs):
                swaps.append((study, STUDY))
    return sorted(swaps, key=lambda swap: len(swap[0]), reverse=True)


def portable_text(text: str, out: Path | None = None, repo: Path = REPO) -> str:
    """text with every absolute path under the repository written relative to its root (the root itself as `.`) and
    every path under a study directory outside it as $STUDY/...: what a reader of a clone can use."""
    for prefix, name in _path_swaps(out, repo):
        pattern = re.compile(r"(?:^|(?<=[\s=\[,:(\"']))" + re.escape(prefix) + r"(?:(/)|(?=[\s\],)\"']|$))")
        text = pattern.sub(lambda m, name=name: (name + "/" if name else "") if m.group(1) else (name or "."), text)
    return text


def portable_command(command: str, out: Path | None = None, repo: Path = REPO) -> str:
    """A recorded command (runner.json, sessions.jsonl) as typed at the repository root of a clone: the interpreter
    as `python` and paths as portable_text writes them; $STUDY stays unquoted so that the shell expands it."""
    try:
        argv = shlex.split(command)
    except ValueError:  # not a shell command line: leave its words alone, only its paths
        return portable_text(command, out, repo)
    if argv and Path(argv[0]).name.startswith("python"):
        argv[0] = "python"
    words = []
    for token in (portable_text(a, out, repo) for a in argv):
        parts = token.split(STUDY)
        words.append(STUDY.join(shlex.quote(p) if p else "" for p in parts) if len(parts) > 1 else shlex.quote(token))
    return " ".join(words)


# --- aggregation ------------------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def decimals(value: float, scale: float) -> int:
    """Percentages with 1 decimal; ratios with 2, fractions below 1 with 3 (the mean decides, the std follows)."""
    return 1 if scale != 1.0 else (2 if abs(value) >= 1 else 3)


def summarise(tasks: list[dict], key: str, scale: float) -> str:
    """The table entry of one metric over the seeds of a strategy: `mean ± std`, with failures named."""
    values = [v for v in (metric(t, key) for t in tasks) if v is not None]
    failed = sum(t["status"] == "failed" for t in tasks)
    if not values:
        return "failed" if failed else "—"
    m, s = mean_std(values)
    d = decimals(m, scale)
    text = f"{m * scale:.{d}f}" + ("" if s is None else f" ± {s * scale:.{d}f}")
    return text + (f" ({failed} of {len(tasks)} failed)" if failed else "")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def sink_by_block(run_dir: Path, source: str) -> list[float] | None:
    """sink_ratio per block: analyze's artifacts.json, or the fine-tuning run's attn/block_NN/sink_ratio."""
    if source == "analyze":
        path = run_dir / "artifacts.json"
        if not path.is_file():
            return None
        return [b["sink_ratio"] for b in json.loads(path.read_text())["blocks"]]
    task = read_task(run_dir)
    keys = sorted(k for k in task["metrics"] if k.startswith("attn/block_") and k.endswith("/sink_ratio"))
    return [task["metrics"][k] for k in keys] or None


def sink_over_training(run_dir: Path, key: str = "attn/shallow_sink_ratio") -> dict[int, float]:
    """{epoch: value} of a pretraining run's attention callback (callbacks=[default,attention_maps]), from its CSV
    log; every csv/version_* of a resumed run counts, the later one winning a step. Empty without the callback."""
    results = run_dir / "results.json"
    if not results.is_file():
        return {}
    info = json.loads(results.read_text())
    if not info.get("epochs") or not info.get("global_step"):
        return {}
    steps_per_epoch = info["global_step"] / info["epochs"]
    by_step: dict[int, float] = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get(key) and row.get("step"):
                    by_step[int(row["step"])] = float(row[key])
    # the callback logs at the end of an epoch's validation, at the step reached by then
    return {round(step / steps_per_epoch): v for step, v in sorted(by_step.items())}


# --- the readings: paired differences and the decision rule ------------------------------------------------------
@dataclass
class Paired:
    """arm - reference of one metric, seed by seed, on the seeds where both have it."""

    seeds: list[int]  # the paired seeds
    missing: list[int]  # seeds where either side has no value
    diffs: list[float]
    rel_pct: list[float]  # 100 (arm - ref) / ref, seed by seed (where ref != 0)

    @property
    def lower(self) -> int:
        return sum(d < 0 for d in self.diffs)

    @property
    def higher(self) -> int:
        return sum(d > 0 for d in self.diffs)

    def signs(self) -> str:
        """How many seeds agree in sign: "3/3 lower", "2/3 higher", "2/2 equal", "1/2 lower, 1/2 higher" (a tie);
        "—" without a paired seed."""
        n = len(self.diffs)
        if not n:
            return "—"
        if not self.lower and not self.higher:
            return f"{n}/{n} equal"
        if self.lower == self.higher:
            return f"{self.lower}/{n} lower, {self.higher}/{n} higher"
        return f"{self.lower}/{n} lower" if self.lower > self.higher else f"{self.higher}/{n} higher"


def paired(arm: dict[int, float | None], ref: dict[int, float | None]) -> Paired:
    """Pair {seed: value} of an arm with the reference's: seeds where either is missing are left out (and named)."""
    seeds = sorted(set(arm) | set(ref))
    both = [k for k in seeds if arm.get(k) is not None and ref.get(k) is not None]
    diffs = [arm[k] - ref[k] for k in both]
    rel = [100.0 * (arm[k] - ref[k]) / ref[k] for k in both if ref[k] != 0]
    return Paired(both, [k for k in seeds if k not in both], diffs, rel)


def pm(values: list[float], scale: float = 1.0, d: int | None = None, sign: bool = False) -> str:
    """`mean ± std` of values (x scale); "—" for none; the std left out for one value."""
    if not values:
        return "—"
    m, s = mean_std([v * scale for v in values])
    d = decimals(m, scale) if d is None else d
    fmt = f"{{:{'+' if sign else ''}.{d}f}}"
    return fmt.format(m) + ("" if s is None else f" ± {s:.{d}f}")


def paired_table(values: dict[str, dict[int, dict]], arms: list[str]) -> str:
    """Rows arm x PAIRED_METRICS: mean ± std over the seeds of (arm - random of the same seed), the relative
    difference for the sink ratios, the seeds that agree in sign, the paired seeds, and random's own seed spread."""
    ref = values[REFERENCE]
    rows, unpaired = [], []
    for arm in arms:
        if arm == REFERENCE:
            continue
        if not any(
            paired({k: v[key] for k, v in values[arm].items()}, {k: v[key] for k, v in ref.items()}).seeds
            for _, key, _, _ in PAIRED_METRICS
        ):
            unpaired.append(arm)  # no seed with numbers on both sides yet: one line below the table, not 7 rows
            continue
        for label, key, scale, relative in PAIRED_METRICS:
            pair = paired({k: v[key] for k, v in values[arm].items()}, {k: v[key] for k, v in ref.items()})
            d = 2 if scale != 1.0 else 3  # points to 2 decimals: the rule's threshold is 0.3 points
            spread = [v[key] for v in ref.values() if v[key] is not None]
            seeds = f"{len(pair.seeds)}" + (
                f" (seed {', '.join(map(str, pair.missing))} missing)" if pair.missing else ""
            )
            rows.append(
                [
                    arm,
                    label,
                    pm(pair.diffs, scale, d, sign=True),
                    pm(pair.rel_pct, 1.0, 1, sign=True) if relative else "",
                    pair.signs(),
                    seeds,
                    f"{statistics.stdev(spread) * scale:.{d}f}" if len(spread) > 1 else "—",
                ]
            )
    table = (
        markdown_table(
            ["arm", "metric", "arm − random (mean ± std)", "relative %", "sign", "paired seeds", "random's seed std"],
            rows,
        )
        if rows
        else "No arm has a seed paired with random yet."
    )
    if unpaired:
        table += (
            "\n\nNot paired with random yet (no seed with results on both sides): "
            + ", ".join(f"`{a}`" for a in unpaired)
            + "."
        )
    return table


def rule_pairs(arm: dict[int, dict], ref: dict[int, dict]) -> tuple[Paired, Paired]:
    """The rule's sink ratio and probe of an arm paired with the reference's, on the seeds where both sides have
    both values."""
    both = [
        k
        for k in sorted(set(arm) | set(ref))
        if all(side.get(k, {}).get(key) is not None for side in (arm, ref) for key in (RULE_SINK, RULE_PROBE))
    ]
    return tuple(
        paired({k: arm[k][key] for k in both}, {k: ref[k][key] for k in both}) for key in (RULE_SINK, RULE_PROBE)
    )


def decide(arm: dict[int, dict], ref: dict[int, dict]) -> tuple[str, str]:
    """The decision rule on one arm -> (verdict: qualifies | does not qualify | cannot be applied yet, why)."""
    sink, probe = rule_pairs(arm, ref)
    n = len(sink.seeds)
    if n < RULE_MIN_SEEDS:
        return "cannot be applied yet", f"{n} paired seed{'s' if n != 1 else ''}, the rule needs {RULE_MIN_SEEDS}"
    drop = -statistics.fmean(sink.rel_pct) if len(sink.rel_pct) == n else float("nan")
    loss = -statistics.fmean(probe.diffs) * 100.0
    facts = f"sink ratio {sink.lower}/{n} lower, {-drop:+.1f}% on average; probe CLS {-loss:+.2f} points"
    ok = sink.lower == n and drop >= RULE_MIN_SINK_DROP_PCT and loss <= RULE_MAX_PROBE_LOSS
    return ("qualifies" if ok else "does not qualify"), facts


def arm_names(arms: list[str]) -> str:
    return ", ".join(f"`{a}`" for a in arms)


def decision_lines(values: dict[str, dict[int, dict]], arms: list[str]) -> list[str]:
    """The decision rule applied mechanically to every arm but random, one line each, under the rule itself, and
    the outcome for the readings (controls are marked and left out of it)."""
    lines = [
        f"Decision rule: a reading qualifies if it lowers the fine-tuning-time shallow sink ratio vs random in "
        f"every confirmation seed (≥ {RULE_MIN_SEEDS} seeds) by at least {RULE_MIN_SINK_DROP_PCT:g}% on average "
        f"and loses at most {RULE_MAX_PROBE_LOSS:g} linear-probe points (CLS). Applied to the numbers above:",
        "",
    ]
    if REFERENCE not in values:
        return [*lines, f"- the rule cannot be applied yet: no `{REFERENCE}` arm to pair with"]
    verdicts = {}
    for arm in arms:
        if arm != REFERENCE:
            verdict, why = decide(values[arm], values[REFERENCE])
            verdicts[arm] = verdict
            role = f", {CONTROLS[arm]}, not a reading" if arm in CONTROLS else ""
            said = "the rule cannot be applied yet" if verdict.startswith("cannot") else verdict
            lines.append(f"- `{arm}`: {said} ({why}{role})")
    readings = [a for a in verdicts if a not in CONTROLS]
    decided = [a for a in readings if not verdicts[a].startswith("cannot")]
    undecided = [a for a in readings if a not in decided]
    winners = [a for a in decided if verdicts[a] == "qualifies"]
    if winners:
        # a qualifying arm has a relative sink change on every paired seed: rank by the rule's own mean
        best = min(winners, key=lambda a: statistics.fmean(rule_pairs(values[a], values[REFERENCE])[0].rel_pct))
        outcome = f"{arm_names(winners)} qualif{'ies' if len(winners) == 1 else 'y'}; " + (
            "`masking=semantic` keeps its meaning, now with the evidence"
            if best == "semantic"
            else f"`{best}` (the largest sink drop) is to become what `masking=semantic` means"
        )
    elif decided:
        outcome = f"no reading qualifies ({arm_names(decided)} decided on ≥ {RULE_MIN_SEEDS} seeds); the defaults stay"
    else:
        outcome = f"not reached yet: no reading has {RULE_MIN_SEEDS} seeds paired with random"
    if decided and undecided:
        outcome += f"; left at the screening (fewer than {RULE_MIN_SEEDS} seeds): {arm_names(undecided)}"
    return [*lines, "", f"Outcome: {outcome}."]


def series_table(values: dict[str, list[list[dict]]], metric_name: str) -> str:
    """One shallow metric along fine-tuning: rows = arms, columns = the series points (start, fractions of the steps,
    end), each the mean over the seeds that have it."""
    points = list(dict.fromkeys(str(e.get("at")) for runs in values.values() for run in runs for e in run))
    rows = []
    for arm, runs in values.items():
        by_point = {
            p: [
                v
                for run in runs
                for e in run
                if str(e.get("at")) == p and (v := _finite(e.get(f"shallow_{metric_name}"))) is not None
            ]
            for p in points
        }
        if any(by_point.values()):
            rows.append(
                [arm, *(f"{(m := statistics.fmean(v)):.{decimals(m, 1.0)}f}" if v else "—" for v in by_point.values())]
            )
    return markdown_table([f"fine-tuning: shallow {SERIES_LABELS[metric_name]} at", *points], rows)


def readings_section(
    out: Path,
    figures: Path,
    rel: Path,
    preset: str,
    arms,
    seeds,
    about: str,
    tasks: tuple[str, ...],
    title: str | None = None,
) -> str:
    """The readings study: per-arm numbers (mean ± std over seeds), paired differences against random, the decision
    rule, the sinks over pretraining and along fine-tuning, wall times, failures and commands."""
    cells = {a: [{t: read_task(out / a / f"seed{k}" / t) for t in tasks} for k in seeds] for a in arms}
    labels = {a: [f"{a}/seed{k}" for k in seeds] for a in arms}
    values = {a: {k: cell_values(out / a / f"seed{k}") for k in seeds} for a in arms}
    rows = []
    for a in arms:
        row = [a, str(sum(c["pretrain"]["status"] == "ok" for c in cells[a]))]
        for _, key, task, scale in READINGS_COLUMNS:
            got = [v[key] for v in values[a].values() if v[key] is not None]
            failed = sum(c[task]["status"] == "failed" for c in cells[a])
            text = pm(got, scale) if got else ("failed" if failed else "—")
            row.append(text + (f" ({failed} of {len(seeds)} failed)" if got and failed else ""))
        rows.append(row)
    parts = [
        f"## {title or f'Preset `{preset}`'}: {', '.join(arms)} x seeds {', '.join(map(str, seeds))}",
        "",
        f"Setting: {about}. Every arm and seed this study directory holds (the screening's and the "
        "confirmation's cells). Mean ± sample std over the seeds; shallow = the first third of the blocks "
        "(docs/artifacts.md#shallow-blocks); pretrained: semmae-analyze on the pretrained encoder; fine-tune "
        "start / end: the first and last point of the fine-tuning run's artifact series.",
        "",
        markdown_table(["arm", "seeds", *(c[0] for c in READINGS_COLUMNS)], rows),
        "",
    ]
    if REFERENCE in arms:
        parts += [
            "Paired differences against random (arm − random of the same seed; seeds where either is missing "
            "are left out, the paired-seeds column says so; the relative difference is the mean of the "
            "per-seed ones):",
            "",
            paired_table(values, arms),
            "",
        ]
    parts += [*decision_lines(values, arms), ""]
    during = {a: [sink_over_training(out / a / f"seed{k}" / "pretrain") for k in seeds] for a in arms}
    if any(c for runs in during.values() for c in runs):
        plot = plot_sink_over_training(during, figures / "sink_over_training.png")
        parts += [
            "Shallow sink ratio during pretraining (the attention callback on the first validation images, "
            "after every epoch; mean over the seeds):",
            "",
            over_training_table(during),
            "",
        ]
        if plot:
            parts += [f"![sink ratio over training]({(rel / plot.name).as_posix()})", ""]
    series = {a: [artifact_series(out / a / f"seed{k}" / "finetune") for k in seeds] for a in arms}
    if any(run for runs in series.values() for run in runs):
        parts += [
            "Along fine-tuning (the artifact series: before the first step, at fractions of the optimizer "
            "steps, at the end; mean over the seeds):",
            "",
        ]
        for m in SERIES_METRICS:
            parts += [series_table(series, m), ""]
        plot = plot_sink_over_finetuning(series, figures / "sink_over_finetuning.png")
        if plot:
            parts += [f"![sink ratio over fine-tuning]({(rel / plot.name).as_posix()})", ""]
    parts += attention_figures(out, figures, rel, arms, seeds[0])
    parts += closing_parts(cells, labels, tasks, out)
    return "\n".join(parts)


# --- figures ----------------------------------------------------------------------------------------------------
def plot_series(
    series: list[tuple[str, list[float], list[list[float]], str, int]], xlabel: str, ylabel: str, path: Path
) -> Path | None:
    """One mean ± std (over the runs) line a series (label, x, runs of y over x, line style, colour index), against
    the even-attention level 1; None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for label, x, runs, style, colour in series:
        a = np.array(runs)
        ax.errorbar(
            x,
            a.mean(0),
            yerr=a.std(0, ddof=1) if len(a) > 1 else None,
            fmt=style,
            marker="o",
            color=f"C{colour}",
            label=label,
            capsize=3,
        )
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sink_vs_block(curves: dict[str, dict[str, list[list[float]]]], path: Path) -> Path | None:
    """curves[strategy][source] = per-seed lists of sink_ratio by block -> mean ± std lines, one colour a strategy."""
    series = []
    for i, (name, by_source) in enumerate(curves.items()):
        for source, style in (("analyze", "-"), ("finetune", "--")):
            runs = [r for r in by_source.get(source, []) if r]
            if runs and len({len(r) for r in runs}) == 1:
                label = name if source == "analyze" else f"{name}, fine-tuned"
                series.append((label, list(range(1, len(runs[0]) + 1)), runs, style, i))
    return plot_series(series, "block", "sink ratio (1 = even attention)", path)


def plot_sink_over_training(curves: dict[str, list[dict[int, float]]], path: Path) -> Path | None:
    """curves[strategy] = per-seed {epoch: shallow sink ratio} -> mean line (± std over the seeds, on the epochs
    they all have)."""
    series = []
    for i, (name, runs) in enumerate(curves.items()):
        runs = [c for c in runs if c]
        epochs = sorted(set.intersection(*(set(c) for c in runs))) if runs else []
        if epochs:
            series.append((name, epochs, [[c[e] for e in epochs] for c in runs], "-", i))
    return plot_series(series, "pretraining epoch", "shallow sink ratio (1 = even attention)", path)


def plot_sink_over_finetuning(series: dict[str, list[list[dict]]], path: Path) -> Path | None:
    """series[arm] = per-seed artifact series of the fine-tuning runs -> the shallow sink ratio against the share of
    the fine-tuning steps done, one mean ± std line an arm (on the points all its seeds have)."""
    lines = []
    for i, (name, runs) in enumerate(series.items()):
        curves = []
        for run in runs:
            last = max((e.get("step", 0) for e in run), default=0)
            points = {
                round(e.get("step", 0) / last, 3) if last else 0.0: _finite(e.get("shallow_sink_ratio")) for e in run
            }
            curves.append({x: v for x, v in points.items() if v is not None})
        curves = [c for c in curves if c]
        xs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if xs:
            lines.append((name, xs, [[c[x] for x in xs] for c in curves], "-", i % 10))
    return plot_series(lines, "share of the fine-tuning steps done", "shallow sink ratio (1 = even attention)", path)


def attention_figures(out: Path, figures: Path, rel: Path, arms, seed: int, noun: str = "arm") -> list[str]:
    """Every arm's (strategy's) attention maps: semmae-analyze's attention_blocks.png of the given seed, the same
    first validation images for every one, copied next to RESULTS.md."""
    parts = []
    for arm in arms:
        src = out / arm / f"seed{seed}" / "analyze" / "attention_blocks.png"
        if src.is_file():
            dst = figures / f"attention_{arm}.png"
            shutil.copyfile(src, dst)
            parts += [
                f"Attention maps, `{arm}` (seed {seed}, the same first validation images for every {noun}):",
                "",
                f"![attention {arm}]({(rel / dst.name).as_posix()})",
                "",
            ]
    return parts


def closing_parts(cells, labels, tasks: tuple[str, ...], out: Path) -> list[str]:
    """What every study section ends with: the runner's wall times and hardware, the failed tasks, the commands."""
    table, total = timing_table(cells, tasks)
    parts = [
        "Wall time (runner, seconds):",
        "",
        table,
        "",
        f"- total wall time of the finished tasks: {total:.0f} s ({total / 60:.1f} min)",
        *hardware_lines(out),
        "",
    ]
    fails = failures(cells, labels, tasks, out)
    if fails:
        parts += ["Failed tasks (rerun run.py to retry them):", "", *fails, ""]
    return [*parts, commands_block(cells, tasks, out)]


def over_training_table(curves: dict[str, list[dict[int, float]]]) -> str:
    """Shallow sink ratio per strategy (rows) and pretraining epoch (columns), mean over the seeds that have it."""
    epochs = sorted({e for runs in curves.values() for c in runs for e in c})
    rows = []
    for name, runs in curves.items():
        if any(runs):
            rows.append(
                [
                    name,
                    *(
                        f"{statistics.fmean(vals):.2f}" if (vals := [c[e] for c in runs if e in c]) else "—"
                        for e in epochs
                    ),
                ]
            )
    return markdown_table(["shallow sink ratio after epoch", *map(str, epochs)], rows)


# --- sections ---------------------------------------------------------------------------------------------------
def device_name(out: Path) -> str:
    """The device of the study's latest runner session: its GPU, else its CPU; "unknown device" without one."""
    sessions = out / "sessions.jsonl"
    rows = [json.loads(ln) for ln in sessions.read_text().splitlines() if ln.strip()] if sessions.is_file() else []
    if not rows:
        return "unknown device"
    hw = rows[-1]["hardware"]
    return hw["gpu"] or f"{hw['cpu']} (no GPU)"


def hardware_lines(out: Path) -> list[str]:
    sessions = out / "sessions.jsonl"
    if not sessions.is_file():
        return ["- hardware: no session record (sessions.jsonl) yet"]
    rows = [json.loads(ln) for ln in sessions.read_text().splitlines() if ln.strip()]
    lines = []
    for hw in {json.dumps(r["hardware"], sort_keys=True) for r in rows}:
        h = json.loads(hw)
        lines.append(
            f"- hardware: {h['cpu']}, {h['cores']} cores, torch {h['torch']}, Python {h['python']}, "
            f"GPU: {h['gpu'] or 'none'}"
        )
    lines.append(
        f"- runner sessions: {len(rows)} ("
        + "; ".join(
            f"{r['finished']}: `{portable_command(shlex.join(r['argv']), out)}`, {r['tasks_run']} tasks in "
            f"{r['wall_s']:.0f} s"
            for r in rows
        )
        + ")"
    )
    return lines


def timing_table(cells: dict[str, list[dict[str, dict]]], tasks: tuple[str, ...]) -> tuple[str, float]:
    rows, total = [], 0.0
    for name, seeds in cells.items():
        row = [name]
        for task in tasks:
            walls = [s[task]["wall_s"] for s in seeds if s[task]["status"] == "ok" and s[task]["wall_s"]]
            total += sum(walls)
            row.append(f"{statistics.fmean(walls):.0f}" if walls else "—")
        rows.append(row)
    return markdown_table(["wall s (mean per run)", *tasks], rows), total


def commands_block(cells: dict[str, list[dict[str, dict]]], tasks: tuple[str, ...], out: Path | None = None) -> str:
    """The tasks' exact commands, as run from the repository root (portable_command: no path of this machine)."""
    cmds = [
        portable_command(s[t]["command"], out)
        for seeds in cells.values()
        for s in seeds
        for t in tasks
        if s[t]["command"]
    ]
    if not cmds:
        return ""
    where = "from the repository root" + (
        "; $STUDY is the study directory, run.py's --out" if any(STUDY in c for c in cmds) else ""
    )
    return (
        f"<details><summary>exact commands ({len(cmds)}, run {where})</summary>\n\n```\n"
        + "\n".join(cmds)
        + "\n```\n</details>"
    )


def failures(
    cells: dict[str, list[dict[str, dict]]], labels: dict[str, list[str]], tasks, out: Path | None = None
) -> list[str]:
    return [
        f"- {labels[name][i]} {t}: {portable_text(s[t]['error'], out)}"
        for name, seeds in cells.items()
        for i, s in enumerate(seeds)
        for t in tasks
        if s[t]["status"] == "failed"
    ]


def diagnostics_table(cells: dict[str, list[dict[str, dict]]]) -> list[str]:
    """The diagnostics of the analyze runs (rows = arms), or nothing when no run has them."""
    present = [
        c
        for c in DIAGNOSTIC_COLUMNS
        if any(c[2] in cell.get(c[1], {}).get("metrics", {}) for arm in cells.values() for cell in arm)
    ]
    if not present:
        return []
    rows = [
        [name, *(summarise([cell[task] for cell in arm], key, scale) for _, task, key, scale in present)]
        for name, arm in cells.items()
    ]
    return [
        "The field's diagnostics on the pretrained encoder (semmae-analyze; docs/artifacts.md#diagnostics; asym = "
        "pretraining view - full view, each share relative to its fair share):",
        "",
        markdown_table(["strategy", *(c[0] for c in present)], rows),
        "",
    ]


def main_section(
    out: Path, figures: Path, rel: Path, preset: str, strategies, seeds, about: str, tasks: tuple[str, ...] = TASKS
) -> str:
    columns = [c for c in MAIN_COLUMNS if c[1] in tasks]  # a preset that skips a task has no column for it
    cells = {s: [{t: read_task(out / s / f"seed{k}" / t) for t in tasks} for k in seeds] for s in strategies}
    labels = {s: [f"{s}/seed{k}" for k in seeds] for s in strategies}
    rows = [
        [
            s,
            str(sum(c["pretrain"]["status"] == "ok" for c in cells[s])),
            *(summarise([c[task] for c in cells[s]], key, scale) for _, task, key, scale in columns),
        ]
        for s in strategies
    ]
    floor = {t: read_task(out / FLOOR / f"seed{seeds[0]}" / t) for t in tasks}  # only linprobe and analyze run
    if any(t["status"] != "missing" for t in floor.values()):
        rows.append(
            [
                f"{FLOOR} (floor, no pretraining)",
                "—",
                *(
                    summarise([floor[task]], key, scale) if floor[task]["status"] != "missing" else "—"
                    for _, task, key, scale in columns
                ),
            ]
        )
        cells[FLOOR], labels[FLOOR] = [floor], [f"{FLOOR}/seed{seeds[0]}"]
    parts = [
        f"## Preset `{preset}`: {', '.join(strategies)} x seeds {', '.join(map(str, seeds))}",
        "",
        f"Setting: {about}. Mean ± sample std over the seeds; shallow = the first third of the blocks "
        "(docs/artifacts.md#shallow-blocks), measured by semmae-analyze on the pretrained encoder"
        + (" and by the fine-tuning run's attention callback at its end." if "finetune" in tasks else "."),
        "",
        markdown_table(["strategy", "seeds", *(c[0] for c in columns)], rows),
        "",
    ]
    parts += diagnostics_table(cells)
    curves = {
        s: {src: [sink_by_block(out / s / f"seed{k}" / src, src) for k in seeds] for src in ("analyze", "finetune")}
        for s in strategies
    }
    plot = plot_sink_vs_block(curves, figures / "sink_vs_block.png")
    if plot:
        parts += [
            "Sink ratio by block (mean ± std over seeds"
            + ("; dashed: after fine-tuning):" if "finetune" in tasks else "):"),
            "",
            f"![sink ratio vs block]({(rel / plot.name).as_posix()})",
            "",
        ]
    parts += attention_figures(out, figures, rel, strategies, seeds[0], noun="strategy")
    during = {s: [sink_over_training(out / s / f"seed{k}" / "pretrain") for k in seeds] for s in strategies}
    plot = plot_sink_over_training(during, figures / "sink_over_training.png")
    if plot:
        parts += [
            "Shallow sink ratio during pretraining (the attention callback on the first validation images, "
            "after every epoch):",
            "",
            over_training_table(during),
            "",
            f"![sink ratio over training]({(rel / plot.name).as_posix()})",
            "",
        ]
    parts += closing_parts(cells, labels, tasks, out)
    return "\n".join(parts)


def ablation_section(out: Path, preset: str, variants, seed: int, about: str) -> str:
    tasks = ("pretrain", "linprobe", "analyze")
    cells = {name: [{t: read_task(out / "ablation" / name / t) for t in tasks}] for name, _, _ in variants}
    labels = {name: [f"ablation/{name}"] for name, _, _ in variants}
    rows = []
    for name, factor, overrides in variants:
        label = f"**{name} (default)**" if factor == "default" else name
        rows.append(
            [
                label,
                factor,
                " ".join(f"`{o}`" for o in overrides),
                *(summarise([cells[name][0][task]], key, scale) for _, task, key, scale in ABLATION_COLUMNS),
            ]
        )
    parts = [
        f"## Ablation (preset `{preset}`, seed {seed})",
        "",
        f"One factor at a time around conf/masking/semantic.yaml, equal epochs; `random` and `block` are "
        f"controls. Setting: {about}.",
        "",
        markdown_table(["variant", "factor", "overrides", *(c[0] for c in ABLATION_COLUMNS)], rows),
        "",
    ]
    default = next(name for name, factor, _ in variants if factor == "default")

    def value(name, task, key):
        return metric(cells[name][0][task], key)

    d_sink, d_probe = value(default, "analyze", "attn/shallow_sink_ratio"), value(default, "linprobe", "test/top1")
    if d_sink is not None and d_probe is not None:
        better = [
            name
            for name, factor, _ in variants
            if factor not in ("default", "control")
            and (v := value(name, "analyze", "attn/shallow_sink_ratio")) is not None
            and v < d_sink
            and (p := value(name, "linprobe", "test/top1")) is not None
            and p >= d_probe
        ]
        parts += [
            "Variants with a lower shallow sink ratio than the default and no lower linear-probe top-1 "
            f"(one seed, so a candidate, not a verdict): {', '.join(better) if better else 'none'}.",
            "",
        ]
    table, total = timing_table(cells, tasks)
    parts += [
        "Wall time (runner, seconds):",
        "",
        table,
        "",
        f"- total wall time of the finished tasks: {total:.0f} s ({total / 60:.1f} min)",
        *hardware_lines(out),
        "",
    ]
    fails = failures(cells, labels, tasks, out)
    if fails:
        parts += ["Failed tasks (rerun run.py to retry them):", "", *fails, ""]
    parts += [commands_block(cells, tasks, out)]
    return "\n".join(parts)


def replace_section(text: str, key: str, body: str) -> str:
    begin, end = f"<!-- BEGIN {key} (written by run.py) -->", f"<!-- END {key} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        return text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    return text.rstrip() + "\n\n" + block + "\n"


def write(
    path: Path,
    out: Path,
    preset: str,
    ablation: bool,
    strategies,
    seeds,
    variants,
    about: str,
    tasks: tuple[str, ...] = TASKS,
    readings: bool = False,
    section: str | None = None,
    instrument: bool = False,
) -> Path:
    """Write (or update) the preset's section of RESULTS.md at path; figures go to <path's folder>/figures/<key>/.
    A section keyed apart from its preset (gpu-suite-readings: `gpu`) is titled by its key and names the device."""
    key = f"{preset}-ablation" if ablation else (section or preset)
    title = f"{key}: preset `{preset}` on {device_name(out)}" if key not in (preset, f"{preset}-ablation") else None
    figures = path.parent / "figures" / key
    figures.mkdir(parents=True, exist_ok=True)
    rel = Path("figures") / key
    if ablation:
        body = ablation_section(out, preset, variants, seeds[0], about)
    elif instrument:  # run.py --preset cpu-instrument: the diagnostics' resolving power
        import resolving_power  # it reads cells with this module's helpers: imported here, not at the top

        body = resolving_power.section(out, figures, rel, preset, strategies, seeds, about, tasks)
    elif readings:  # run.py --preset cpu-readings (and smoke-readings): paired differences and the decision rule
        body = readings_section(out, figures, rel, preset, strategies, seeds, about, tasks, title)
    else:
        body = main_section(out, figures, rel, preset, strategies, seeds, about, tasks)
    text = (
        path.read_text()
        if path.is_file()
        else (
            "# Replication study: semantic vs random masking\n\n"
            "Written by `experiments/semantic_vs_random/run.py` from the runs' results.json files; each preset's "
            "section is replaced when that preset is rerun, text outside the marked sections is kept.\n"
        )
    )
    path.write_text(replace_section(text, key, body))
    return path
