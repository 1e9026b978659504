"""The probes of one `semmae-linprobe` run side by side: every result (encoder x head x block x seed) collapsed over
the seeds (mean, and the sample std when there are several), named by what varies in the run, and as one table with a
row per head (and block) and a column per encoder."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

ENCODER_LABELS = {"checkpoint": "checkpoint", "random_init": "random init"}
HEAD_LABELS = {"linear": "linear", "ep": "EP", "mhca": "MHCA", "knn": "k-NN"}


@dataclass
class ProbeResult:
    encoder: str  # "checkpoint" (the ckpt= encoder) or "random_init" (its randomly initialised twin)
    head: str  # linear, ep, mhca, knn
    block: int
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)  # test/top1, test/top5; k-NN also test/top1_k<k>, ...
    run_dir: str | None = None
    best_checkpoint: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def varying(results: Iterable[ProbeResult]) -> list[str]:
    """The fields among encoder, head, block that take more than one value."""
    results = list(results)
    return [name for name in ("encoder", "head", "block") if len({getattr(r, name) for r in results}) > 1]


def prefix(result: ProbeResult, vary: Iterable[str]) -> str:
    """The metric-name prefix of a result: what varies in the run, e.g. "random_init/ep/block3/"; "" for one probe."""
    parts = {"encoder": result.encoder, "head": result.head, "block": f"block{result.block}"}
    return "".join(f"{parts[name]}/" for name in ("encoder", "head", "block") if name in vary)


def groups(results: Iterable[ProbeResult]) -> dict[tuple[str, str, int], list[ProbeResult]]:
    """Results by (encoder, head, block), the seeds of each together, in run order."""
    out: dict[tuple[str, str, int], list[ProbeResult]] = {}
    for r in results:
        out.setdefault((r.encoder, r.head, r.block), []).append(r)
    return out


def aggregate(results: list[ProbeResult]) -> dict[str, float]:
    """Every metric of every group, averaged over its seeds, under its prefix; with several seeds also its sample
    std (<name>_std) and the number of seeds (<prefix>seeds)."""
    vary = varying(results)
    out: dict[str, float] = {}
    for runs in groups(results).values():
        pre = prefix(runs[0], vary)
        for key in dict.fromkeys(k for r in runs for k in r.metrics):
            values = [r.metrics[key] for r in runs if key in r.metrics]
            out[pre + key] = statistics.fmean(values)
            if len(values) > 1:
                out[f"{pre}{key}_std"] = statistics.stdev(values)
        if len(runs) > 1:
            out[f"{pre}seeds"] = float(len(runs))
    return out


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def table(results: list[ProbeResult], knn_k: int | None = None) -> list[list[str]]:
    """Rows: a header, then one per head (in run order) and block; columns: the probe, then test top-1 % per encoder
    (mean ± std over the seeds)."""
    encoders = list(dict.fromkeys(r.encoder for r in results))
    by_group = groups(results)
    heads = list(dict.fromkeys(head for _, head, _ in by_group))
    rows_seen = sorted(
        dict.fromkeys((head, block) for _, head, block in by_group), key=lambda hb: (heads.index(hb[0]), hb[1])
    )  # head by head, blocks in order
    many_blocks = len({block for _, block in rows_seen}) > 1
    header = ["probe (test top-1 %)", *(ENCODER_LABELS.get(e, e) for e in encoders)]
    rows = [header]
    for head, block in rows_seen:
        name = HEAD_LABELS.get(head, head) + (f" (k={knn_k})" if head == "knn" and knn_k else "")
        if many_blocks:
            name += f", block {block}"
        rows.append(
            [
                name,
                *(
                    cell(
                        [r.metrics["test/top1"] for r in by_group.get((e, head, block), []) if "test/top1" in r.metrics]
                    )
                    for e in encoders
                ),
            ]
        )
    return rows


def format_table(rows: list[list[str]]) -> str:
    """Rows as aligned text columns (the console), the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    )


def markdown_table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
