"""A Hydra sweep as a table: each job's overrides (.hydra/overrides.yaml), masking strategy and ratio (.hydra/), and
final metrics (results.json), or why it has none (failed.json: failed with its error line; neither file: incomplete),
collated into rows for sweep.csv and sweep.md, and each metric plotted against the mask ratio, one line per
strategy."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semmae.errors import DataError
from semmae.utils.atomic import atomic_write_text

# Metrics every pretraining run reports, in table order; artifact metrics (attn/*) follow when present.
MAIN_METRICS = ("val/online_probe_acc", "val/loss", "train/loss_epoch")
PLOTTED = ("val/online_probe_acc", "val/loss", "attn/shallow_sink_ratio")
LABELS = {
    "val/online_probe_acc": "online probe accuracy",
    "val/loss": "val reconstruction loss",
    "train/loss_epoch": "train loss",
    "attn/shallow_sink_ratio": "shallow sink ratio",
}
SWEEP_AXES = ("masking", "masking.mask_ratio")  # shown as their own columns


@dataclass
class Job:
    name: str
    path: Path
    status: str  # ok | failed | incomplete | corrupt (a results.json or failed.json that cannot be read)
    overrides: list[str] = field(default_factory=list)
    strategy: str | None = None
    mask_ratio: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # epochs, global_step, wall_time_s, checkpoint
    error: str = ""

    def override_map(self) -> dict[str, str]:
        out = {}
        for item in self.overrides:
            key, sep, value = item.partition("=")
            if sep:
                out[key.lstrip("+~")] = value
        return out


# --- reading a multirun directory ---------------------------------------------------------------------------------
def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _read_record(path: Path) -> tuple[dict | None, str]:
    """(the JSON object in path, "") or (None, what is wrong with the file)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        return None, f"{path.name} cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return None, f"{path.name} is corrupt: not valid JSON ({getattr(exc, 'msg', exc)}, truncated or damaged)"
    if not isinstance(data, dict):
        return None, f"{path.name} is corrupt: it holds a {type(data).__name__}, not a record"
    return data, ""


def _is_job_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in (".hydra", "results.json", "failed.json"))


def _job_sort_key(path: Path) -> tuple[int, int | str]:
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def find_jobs(multirun_dir: Path) -> list[Path]:
    if not multirun_dir.is_dir():
        raise DataError(
            f"{multirun_dir} is not a directory: pass a multirun directory, e.g. multirun/pretrain/<date_time>"
        )
    jobs = sorted((p for p in multirun_dir.iterdir() if _is_job_dir(p)), key=_job_sort_key)
    if not jobs:
        sweeps = [p for p in multirun_dir.iterdir() if p.is_dir() and any(_is_job_dir(q) for q in p.iterdir())]
        newest = max(sweeps, key=lambda p: p.stat().st_mtime) if sweeps else None
        hint = f"; the newest sweep under it is {newest}" if newest else ""
        raise DataError(f"no sweep jobs in {multirun_dir} (expected <dir>/<job number>/.hydra or results.json){hint}")
    return jobs


def read_job(path: Path) -> Job:
    results, failed = path / "results.json", path / "failed.json"
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml") or []
    config = _read_yaml(path / ".hydra" / "config.yaml") or {}
    choices = (_read_yaml(path / ".hydra" / "hydra.yaml") or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
    job = Job(name=path.name, path=path, status="incomplete", overrides=[str(o) for o in overrides])

    # the newer of results.json and failed.json describes the job (a resumed run may follow a failed attempt)
    res, res_problem = _read_record(results) if results.is_file() else (None, "")
    fail, fail_problem = _read_record(failed) if failed.is_file() else (None, "")
    newer = not failed.is_file() or (results.is_file() and results.stat().st_mtime >= failed.stat().st_mtime)
    metrics = res.get("metrics", {}) if res is not None else None
    if res is not None and metrics is not None and not isinstance(metrics, dict):
        res, res_problem = None, f"results.json is corrupt: its metrics are a {type(metrics).__name__}, not a table"
    if results.is_file() and newer and res_problem:
        job.status, job.error = "corrupt", res_problem
    elif res is not None and newer:
        job.status = "ok"
        job.metrics = {
            k: float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        job.info = {k: res.get(k) for k in ("epochs", "global_step", "wall_time_s", "checkpoint")}
        config = config or (res.get("config") if isinstance(res.get("config"), dict) else {})
    elif fail is not None:
        job.status = "failed"
        job.error = " ".join(str(fail.get("error") or fail.get("type") or "failed").split())
    elif fail_problem:
        job.status, job.error = "corrupt", fail_problem

    masking = config.get("masking") if isinstance(config, dict) else None
    job.strategy = choices.get("masking") or job.override_map().get("masking")
    if job.strategy is None and isinstance(masking, dict) and "_target_" in masking:
        job.strategy = str(masking["_target_"]).rsplit(".", 1)[-1]
    if isinstance(masking, dict) and masking.get("mask_ratio") is not None:
        job.mask_ratio = float(masking["mask_ratio"])
    return job


def collect(multirun_dir: str | Path) -> list[Job]:
    return [read_job(p) for p in find_jobs(Path(multirun_dir))]


# --- the table ------------------------------------------------------------------------------------------------------
def metric_columns(jobs: list[Job]) -> list[str]:
    present = {k for j in jobs for k in j.metrics}
    attn = sorted(k for k in present if k.startswith("attn/"))
    return [k for k in MAIN_METRICS if k in present] + attn


def varying_overrides(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (the sweep's axes), in first-seen order."""
    maps = [j.override_map() for j in jobs]
    keys: list[str] = []
    for m in maps:
        keys += [k for k in m if k not in keys]
    return [k for k in keys if k not in SWEEP_AXES and len({m.get(k) for m in maps}) > 1]


def rows(jobs: list[Job]) -> tuple[list[str], list[dict[str, Any]]]:
    metrics, axes = metric_columns(jobs), varying_overrides(jobs)
    header = [
        "job",
        "status",
        "masking",
        "mask_ratio",
        *axes,
        *metrics,
        "epochs",
        "global_step",
        "wall_time_s",
        "error",
        "overrides",
    ]
    table = []
    for j in jobs:
        ov = j.override_map()
        row: dict[str, Any] = {"job": j.name, "status": j.status, "masking": j.strategy, "mask_ratio": j.mask_ratio}
        row.update({k: ov.get(k) for k in axes})
        row.update({k: j.metrics.get(k) for k in metrics})
        row.update({k: j.info.get(k) for k in ("epochs", "global_step", "wall_time_s")})
        row.update(error=j.error, overrides=" ".join(j.overrides))
        table.append(row)
    return header, table


def _fmt(key: str, value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        if "acc" in key:
            return f"{100 * value:.2f}%"
        if key == "wall_time_s":
            return f"{value:.0f}"
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_csv(path: Path, header: list[str], table: list[dict[str, Any]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=header)
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in table)
    atomic_write_text(path, text.getvalue())


def is_summary(metric: str) -> bool:
    """A model-level attention metric (the mean over the shallow blocks), as opposed to one block's value."""
    return metric.startswith("attn/shallow_")


def markdown(header: list[str], table: list[dict[str, Any]], title: str) -> str:
    cols = [c for c in header if c != "overrides" and not (c.startswith("attn/") and not is_summary(c))]
    if not any(row["error"] for row in table):
        cols.remove("error")
    ok = sum(row["status"] == "ok" for row in table)
    lines = [
        f"# Sweep {title}",
        "",
        f"{len(table)} jobs: {ok} ok, {len(table) - ok} failed or incomplete.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(_fmt(c, row[c]) for c in cols) + " |" for row in table]
    lines += [
        "",
        "Accuracies in percent; losses are the last epoch's values. The table shows the attention metrics' "
        "means over the shallow blocks and the overrides that vary between jobs; `sweep.csv` has every metric "
        "of every block and every override of every job.",
    ]
    return "\n".join(lines) + "\n"


# --- the plot -------------------------------------------------------------------------------------------------------
def _x(job: Job, jobs: list[Job]) -> float:
    """The mask ratio when every job has one, else the job number."""
    if all(j.mask_ratio is not None for j in jobs):
        return job.mask_ratio
    return float(int(job.name)) if job.name.isdigit() else float(jobs.index(job))


def series(jobs: list[Job], metric: str) -> dict[str, tuple[list[float], list[float]]]:
    """One line per masking strategy (and per value of any other swept override): label -> (xs, ys), sorted by x;
    finished jobs only; repeated points (same line, same x) are averaged."""
    axes_keys = varying_overrides(jobs)
    lines: dict[str, dict[float, list[float]]] = {}
    for j in jobs:
        if j.status != "ok" or not math.isfinite(j.metrics.get(metric, math.nan)):
            continue
        ov = j.override_map()
        extra = ", ".join(f"{k}={ov.get(k)}" for k in axes_keys)
        label = (j.strategy or "job") + (f" ({extra})" if extra else "")
        lines.setdefault(label, {}).setdefault(_x(j, jobs), []).append(j.metrics[metric])
    return {
        label: (sorted(pts), [sum(pts[x]) / len(pts[x]) for x in sorted(pts)]) for label, pts in sorted(lines.items())
    }


def plot(path: Path, jobs: list[Job], title: str) -> Path:
    from semmae.utils.plotting import plt, save_figure

    present = {k for j in jobs for k in j.metrics}
    metrics = [m for m in PLOTTED if m in present] or metric_columns(jobs)[:1] or ["val/loss"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    failed = [j for j in jobs if j.status != "ok"]
    for ax, metric in zip(axes[0], metrics):
        for label, (xs, ys) in series(jobs, metric).items():
            ax.plot(xs, ys, marker="o", label=label)
        if failed:  # failed or incomplete jobs: red crosses on the x axis
            ax.plot(
                [_x(j, jobs) for j in failed],
                [0.0] * len(failed),
                "x",
                color="red",
                markersize=9,
                clip_on=False,
                transform=ax.get_xaxis_transform(),
                label=f"failed/incomplete ({len(failed)})",
            )
        ax.set_xlabel("mask ratio" if all(j.mask_ratio is not None for j in jobs) else "job")
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"sweep {title}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
