"""`semmae-report <multirun dir>` (also `python -m semmae.report`): collate the jobs of a Hydra sweep
(semmae.analysis.sweep_table) into sweep.csv, sweep.md (a table) and sweep.png (each metric against the mask ratio,
one line per masking strategy), written into the multirun directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semmae.analysis.sweep_table import collect, markdown, plot, rows, write_csv
from semmae.errors import DataError
from semmae.utils.atomic import atomic_write_text


def write_sweep_report(multirun_dir: str | Path) -> dict[str, Path]:
    """Write sweep.csv, sweep.md and sweep.png into multirun_dir; returns their paths."""
    root = Path(multirun_dir)
    jobs = collect(root)
    header, table = rows(jobs)
    out = {"csv": root / "sweep.csv", "md": root / "sweep.md", "png": root / "sweep.png"}
    write_csv(out["csv"], header, table)
    atomic_write_text(out["md"], markdown(header, table, root.name))
    plot(out["png"], jobs, root.name)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="semmae-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", help="a Hydra multirun directory, e.g. multirun/pretrain/<date_time>")
    args = parser.parse_args(argv)
    try:
        out = write_sweep_report(args.multirun_dir)
    except DataError as exc:
        print(f"semmae-report: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(out["md"].read_text())
    for kind, path in out.items():
        print(f"{kind:>3}: {path}")


if __name__ == "__main__":
    main()
