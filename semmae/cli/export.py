"""`semmae-export` (also `python -m semmae.export`): write an encoder, from any source ckpt= accepts, as a
timm-compatible state dict (.pth, or .safetensors) that records its geometry; print the line that loads it into
timm. The record lets ckpt=<exported file> rebuild the encoder in every semmae task."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from semmae.cli.entry import hydra_entry
from semmae.cli.run_steps import print_summary, resolve_ckpt, resolved_config, write_results
from semmae.errors import ConfigError
from semmae.models.export import export_encoder, timm_load_line
from semmae.models.loading import describe, load_encoder


def check_out(out: Path, source: str, overwrite: bool) -> None:
    """out may be written: not the file the encoder is read from, not a directory, and not an existing file unless
    the user asked (overwrite=true): an export must never replace a run's checkpoint by accident."""
    if out.is_dir():
        raise ConfigError(f"out={out} is a directory: give a file name ending in .pth or .safetensors")
    if not source.startswith("timm:") and out.resolve() == Path(source).resolve():
        raise ConfigError(f"out={out} is the checkpoint the encoder is read from (ckpt={source}): write it elsewhere")
    if out.exists() and not overwrite:
        raise ConfigError(f"out={out} exists: choose another file, or add overwrite=true to replace it")


def run(cfg: DictConfig) -> dict[str, str]:
    start = time.time()
    source = resolve_ckpt(cfg)
    if source is None:
        raise ConfigError("semmae-export needs ckpt=PATH (or latest, or timm:MODEL_NAME with ckpt_file=...)")
    overrides = {k: v for k, v in (cfg.get("encoder") or {}).items() if v is not None}
    encoder = load_encoder(source, weights_file=cfg.get("ckpt_file"), root=cfg.paths.root_dir,
                           trust=bool(cfg.get("trust_checkpoint", False)), **overrides)
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.output_dir) / "encoder.pth"
    check_out(out, source, bool(cfg.get("overwrite", False)))
    export_encoder(encoder, out, source)
    line = timm_load_line(encoder, out)
    write_results(cfg.paths.output_dir, {"task": "export", "source": source, "out": str(out), "timm": line,
                                         "encoder": describe(encoder), "wall_time_s": round(time.time() - start, 1),
                                         "config": resolved_config(cfg)})
    print_summary({"source": source, "encoder": describe(encoder), "written": str(out)})
    print(f"\nLoad it into timm:\n  {line}")
    return {"out": str(out)}


main = hydra_entry("export", run)

if __name__ == "__main__":
    main()
