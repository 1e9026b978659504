"""`semmae-export` (also `python -m semmae.export`): write an encoder, from any source ckpt= accepts, for others to
load. format=timm: a timm-compatible state dict (.pth, or .safetensors) that records its geometry, and the line that
loads it into timm; the record lets ckpt=<exported file> rebuild the encoder in every semmae task. format=hf: a
Hugging Face ViTMAE directory (config.json + model.safetensors) for transformers' ViTMAEModel.from_pretrained, which
ckpt=hf:DIR reads back."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from semmae.analysis.fixes import FIX_KEYS, FixSettings
from semmae.cli.entry import hydra_entry
from semmae.cli.run_steps import print_summary, resolve_ckpt, resolved_config, write_results
from semmae.errors import ConfigError
from semmae.models.export import export_encoder, export_hf, hf_load_line, timm_load_line
from semmae.models.loading import describe, load_encoder
from semmae.models.sources import HF_PREFIX

FORMATS = ("timm", "hf")


def check_out(out: Path, source: str, fmt: str, overwrite: bool) -> None:
    """out may be written: not what the encoder is read from, a file for format=timm and a directory for format=hf,
    and nothing that exists unless the user asked (overwrite=true): an export must never replace a run's checkpoint
    by accident."""
    if fmt == "timm" and out.is_dir():
        raise ConfigError(f"out={out} is a directory: give a file name ending in .pth or .safetensors")
    if fmt == "hf" and out.is_file():
        raise ConfigError(f"out={out} is a file: format=hf writes a directory (config.json + model.safetensors)")
    read = source.removeprefix(HF_PREFIX)
    if not source.startswith("timm:") and out.resolve() == Path(read).resolve():
        raise ConfigError(f"out={out} is the checkpoint the encoder is read from (ckpt={source}): write it elsewhere")
    if out.exists() and not overwrite:
        raise ConfigError(
            f"out={out} exists: choose another {'file' if fmt == 'timm' else 'directory'}, or add "
            "overwrite=true to replace it"
        )


def run(cfg: DictConfig) -> dict[str, str]:
    start = time.time()
    fmt = str(cfg.get("format", "timm"))
    if fmt not in FORMATS:
        raise ConfigError(
            f"format={fmt}: choose timm (a .pth / .safetensors state dict) or hf (a transformers ViTMAE directory)"
        )
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.paths.output_dir) / ("encoder.pth" if fmt == "timm" else "hf")
    source = resolve_ckpt(cfg)
    if source is None:
        raise ConfigError("semmae-export needs ckpt=PATH (or latest, hf:DIR, or timm:MODEL_NAME with ckpt_file=...)")
    check_out(out, source, fmt, bool(cfg.get("overwrite", False)))
    if fmt == "hf" and out.suffix in (".pth", ".safetensors", ".ckpt", ".bin"):
        raise ConfigError(f"format=hf writes a directory (config.json + model.safetensors): out={out} names a file")
    if fmt == "timm" and out.suffix not in (".pth", ".safetensors"):
        raise ConfigError(f"format=timm writes a .pth or .safetensors file: out={out}")
    node = cfg.get("encoder") or {}
    if FixSettings.from_config(node).requested:
        raise ConfigError(
            "semmae-export writes the encoder's weights, and a training-free fix is not a weight: drop "
            "encoder.test_time_registers / encoder.soap here and set them where the encoder is evaluated "
            "(semmae-analyze, -linprobe, -finetune, -segment)"
        )
    overrides = {k: v for k, v in node.items() if v is not None and k not in FIX_KEYS}
    encoder = load_encoder(
        source,
        weights_file=cfg.get("ckpt_file"),
        root=cfg.paths.root_dir,
        trust=bool(cfg.get("trust_checkpoint", False)),
        **overrides,
    )
    if fmt == "hf":
        export_hf(encoder, out)
        line, how = hf_load_line(out), "Load it into transformers"
    else:
        export_encoder(encoder, out, source)
        line = timm_load_line(encoder, out)
        how = "Note" if encoder.config.get("attn_gate") else "Load it into timm"
    write_results(
        cfg.paths.output_dir,
        {
            "task": "export",
            "source": source,
            "format": fmt,
            "out": str(out),
            "load": line,
            "encoder": describe(encoder),
            "wall_time_s": round(time.time() - start, 1),
            "config": resolved_config(cfg),
        },
    )
    print_summary({"source": source, "encoder": describe(encoder), "written": str(out)})
    print(f"\n{how}:\n  {line}")
    return {"out": str(out)}


main = hydra_entry("export", run)

if __name__ == "__main__":
    main()
