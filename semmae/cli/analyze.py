"""`semmae-analyze` (also `python -m semmae.analyze`): attention maps, artifact metrics and the diagnostics
(docs/artifacts.md) of one or more encoders on the first `num_images` full validation images of the `dataset` group.

One encoder -> in the run directory: attention_blocks.png, cls_attention.png, sink_classes.png, artifacts.json,
artifacts.md, metrics_vs_depth.png. Several (ckpt=[a,b,...]), or one with a training-free fix
(encoder.test_time_registers=K, encoder.soap=true: shown as fixed and without) -> the same files per encoder in
<run>/<n>_<label>/, plus comparison.png (every metric versus block depth, one line per encoder), comparison.md and
comparison.json. Seed -> encoders (-> fixes) -> data -> diagnose -> figures and tables -> results.json; the time of
each part is printed."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from semmae.analysis.artifacts import batch_images
from semmae.analysis.asymmetry import checkpoint_mask_ratio
from semmae.analysis.diagnostic_tables import diagnostics_comparison, diagnostics_markdown, timings_line
from semmae.analysis.diagnostics import Diagnosis, DiagnosticSettings, diagnose
from semmae.analysis.figures import attention_grid, block_titles, display_images, metrics_vs_depth, sink_class_grid
from semmae.analysis.fixes import FIX_KEYS, FixSettings, apply_fixes, calibration_images
from semmae.analysis.synthetic_images import synthetic_batches
from semmae.analysis.tables import artifacts_markdown, comparison_markdown, write_json, write_text
from semmae.cli.entry import hydra_entry
from semmae.cli.run_steps import print_summary, resolved_config, write_results
from semmae.errors import ConfigError
from semmae.models.loading import build_encoder
from semmae.models.sources import resolve_source
from semmae.utils.plotting import save_figure

RANDOM = "random"  # how a randomly initialised encoder (ckpt=random or ckpt=null) is named in the outputs


def sources(cfg: DictConfig) -> list[str]:
    """cfg.ckpt as a list of sources, resolved as every entry point resolves ckpt= (semmae.models.sources):
    paths (latest = the newest file matching latest_glob, which may point at any task's checkpoints), timm:NAME,
    and RANDOM for null / random."""
    raw = cfg.ckpt
    items = list(raw) if isinstance(raw, (list, tuple, ListConfig)) else [raw]
    if not items:
        raise ConfigError("ckpt=[]: give at least one checkpoint (a path, latest or random)")
    out = [resolve_source(item, cfg.paths.root_dir, cfg.latest_glob) or RANDOM for item in items]
    if cfg.get("ckpt_file") is not None and not any(s.startswith("timm:") for s in out):
        raise ConfigError(f"ckpt_file={cfg.ckpt_file} is only used with ckpt=timm:MODEL_NAME (got ckpt={raw})")
    return out


def default_label(source: str) -> str:
    """random -> 'random init'; <run>/checkpoints/last.ckpt -> '<run>'; other paths -> their file stem."""
    if source == RANDOM:
        return "random init"
    path = Path(source)
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return path.parent.parent.name + ("" if path.stem == "last" else f"/{path.stem}")
    return path.stem or source


def labels_for(cfg: DictConfig, srcs: list[str]) -> list[str]:
    if cfg.get("names") is not None:
        names = [str(n) for n in cfg.names]
        if len(names) != len(srcs):
            raise ConfigError(f"names has {len(names)} entries but ckpt has {len(srcs)}: give one name per checkpoint")
        if len(set(names)) != len(names):
            raise ConfigError(f"names={names}: the names must be different")
        return names
    labels, seen = [], {}
    for src in srcs:
        label = default_label(src)
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def analysis_encoder(cfg: DictConfig, source: str) -> torch.nn.Module:
    """semmae.models.loading.build_encoder, the builder of every task. RANDOM: the encoder of a freshly
    initialised MAE (the state pretraining starts from; linprobe's ckpt=null) with the backbone group's geometry and
    the dataset's channels, seeded by cfg.seed wherever it sits in ckpt=[...]. A file or timm:NAME: its weights at
    its own geometry (the images are prepared for it). cfg.encoder overrides either (its training-free fixes are
    applied after the build)."""
    overrides = OmegaConf.to_container(cfg.encoder, resolve=True) if cfg.get("encoder") else {}
    overrides = {k: v for k, v in overrides.items() if k not in FIX_KEYS}
    if source == RANDOM:
        geometry = {"img_size": cfg.backbone.img_size, "in_chans": cfg.dataset.channels}
        return build_encoder(
            None,
            backbone=OmegaConf.to_container(cfg.backbone, resolve=True),
            seed=int(cfg.seed),
            **{**geometry, **overrides},
        )
    return build_encoder(
        source,
        weights_file=cfg.get("ckpt_file") if source.startswith("timm:") else None,
        root=cfg.paths.root_dir,
        trust=bool(cfg.get("trust_checkpoint", False)),
        **overrides,
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def geometry(encoder: torch.nn.Module) -> tuple[int, int]:
    """(image size, input channels) the encoder expects."""
    size = encoder.patch_embed.img_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return int(size), int(encoder.patch_embed.proj.in_channels)


class ValImages:
    """The first `num_images` images of the dataset group's val split, evaluation-transformed, in batches; one
    datamodule per encoder geometry (image size, channels), each set up once."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self._modules: dict[tuple[int, int], Any] = {}

    def datamodule(self, size: int, channels: int):
        key = (size, channels)
        if key not in self._modules:
            dm = instantiate(self.cfg.dataset, img_size=size, channels=channels, eval_batch_size=self.cfg.batch_size)
            dm.prepare_data()
            dm.setup("validate")
            self._modules[key] = dm
        return self._modules[key]

    def batches(self, size: int, channels: int) -> Iterator[torch.Tensor]:
        dm = self.datamodule(size, channels)
        for batch in dm.eval_batches("val", limit=int(self.cfg.num_images)):  # the evaluation view, in order
            images = batch_images(batch)
            if images is None:
                raise ConfigError(f"{type(dm).__name__} batches hold no image tensor [B, C, H, W]")
            yield images.float()


def write_one(d: Diagnosis, label: str, out: Path, mean, std, vmax: float) -> dict[str, str]:
    """The files of one encoder in `out`."""
    report = d.artifacts
    shown = display_images(report.images, mean, std)
    titles = block_titles(report)
    files = {
        "attention_blocks": save_figure(
            attention_grid(
                shown, report.received, report.grid_size, f"{label}: received attention r' per block", titles, vmax
            ),
            out / "attention_blocks.png",
        ),
        "cls_attention": save_figure(
            attention_grid(
                shown, report.cls, report.grid_size, f"{label}: CLS -> patch attention per block", titles, vmax
            ),
            out / "cls_attention.png",
        ),
        "artifacts_json": write_json(out / "artifacts.json", {"encoder": label, **d.to_dict()}),
        "artifacts_md": write_text(out / "artifacts.md", artifacts_markdown(report, label) + diagnostics_markdown(d)),
        "metrics_vs_depth": save_figure(
            metrics_vs_depth({label: report}, f"{label}: attention artifacts by block"), out / "metrics_vs_depth.png"
        ),
    }
    if d.heads is not None:
        files["sink_classes"] = save_figure(
            sink_class_grid(d.heads, f"{label}: attention sinks by block and head"), out / "sink_classes.png"
        )
    return {k: str(v) for k, v in files.items()}


def pretraining_masking(cfg: DictConfig, source: str):
    """The masking group's strategy at the ratio of the asymmetry's pretraining view: analysis.asymmetry.mask_ratio,
    else the checkpoint's own (its record), else the group's mask_ratio."""
    ratio = cfg.analysis.get("asymmetry", {}).get("mask_ratio")
    if ratio is None and source != RANDOM:
        ratio = checkpoint_mask_ratio(source, trust=bool(cfg.get("trust_checkpoint", False)))
    return instantiate(cfg.masking, mask_ratio=ratio if ratio is not None else cfg.masking.mask_ratio)


def fix_names(done: list[str], fixes: FixSettings) -> str:
    names = [f"test-time registers ({fixes.test_time_registers})" for d in done if "test-time" in d]
    names += ["SOAP" for d in done if d.startswith("SOAP")]
    return " + ".join(names)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "encoder"


def run(cfg: DictConfig) -> dict[str, float]:
    start = time.time()
    torch.manual_seed(int(cfg.seed))
    if int(cfg.num_images) < 1 or int(cfg.batch_size) < 1:
        raise ConfigError(f"num_images={cfg.num_images}, batch_size={cfg.batch_size}: both must be >= 1")
    a = cfg.analysis
    settings = DiagnosticSettings.from_config(OmegaConf.to_container(a, resolve=True))
    fixes = FixSettings.from_config(OmegaConf.to_container(cfg.encoder, resolve=True) if cfg.get("encoder") else None)
    vmax = float(a.vmax) if a.get("vmax") is not None else 2.0 * settings.artifacts.tau
    srcs = sources(cfg)
    labels = labels_for(cfg, srcs)
    device = pick_device(str(cfg.device))
    out_dir = Path(cfg.paths.output_dir)
    data = ValImages(cfg)

    runs: list[tuple[str, str, torch.nn.Module]] = []  # (source, label, encoder): each, and its fixed twin
    diagnoses: dict[str, Diagnosis] = {}
    files: dict[str, dict[str, str]] = {}
    for source, label in zip(srcs, labels, strict=True):
        encoder = analysis_encoder(cfg, source).to(device)
        size, channels = geometry(encoder)
        dm = data.datamodule(size, channels)
        mean, std = getattr(dm, "mean", (0.5,) * channels), getattr(dm, "std", (0.5,) * channels)
        masking = pretraining_masking(cfg, source) if "asymmetry" in settings.parts else None
        todo = [(label, encoder)]
        if fixes.requested:
            fixed = analysis_encoder(cfg, source).to(device)
            done = apply_fixes(fixed, fixes, calibration_images(dm, fixes.images, device), mean, std)
            if done:
                todo.append((f"{label} + {fix_names(done, fixes)}", fixed))
                for line in done:
                    print(f"{label}: {line}")
        for name, enc in todo:
            d = diagnose(
                enc,
                partial(data.batches, size, channels),
                settings,
                keep_images=int(cfg.figure_images),
                masking=masking,
                synthetic=partial(
                    synthetic_batches,
                    channels=channels,
                    size=size,
                    mean=mean,
                    std=std,
                    seed=settings.invariance.seed,
                    batch_size=int(cfg.batch_size),
                ),
            )
            diagnoses[name] = d
            files[name] = {"source": source}
            print(f"{name}: {timings_line(d)}")
            runs.append((source, name, enc))
    multi = len(diagnoses) > 1
    for n, (_source, name, enc) in enumerate(runs, start=1):
        target = out_dir if not multi else out_dir / f"{n}_{slug(name)}"
        size, channels = geometry(enc)
        dm = data.datamodule(size, channels)
        files[name].update(
            write_one(diagnoses[name], name, target, getattr(dm, "mean", None), getattr(dm, "std", None), vmax)
        )
    reports = {name: d.artifacts for name, d in diagnoses.items()}

    summary: dict[str, Any] = {}
    if multi:
        files["comparison"] = {
            "plot": str(
                save_figure(metrics_vs_depth(reports, "attention artifacts by block"), out_dir / "comparison.png")
            ),
            "table": str(
                write_text(out_dir / "comparison.md", comparison_markdown(reports) + diagnostics_comparison(diagnoses))
            ),
            "json": str(
                write_json(
                    out_dir / "comparison.json",
                    {name: {"source": files[name]["source"], **d.to_dict()} for name, d in diagnoses.items()},
                )
            ),
        }
        metrics = {f"{name}/{k}": v for name, d in diagnoses.items() for k, v in d.scalars().items()}
    else:
        metrics = next(iter(diagnoses.values())).scalars()
    write_results(
        out_dir,
        {
            "task": "analyze",
            "metrics": metrics,
            "encoders": {name: files[name]["source"] for name in diagnoses},
            "timings_s": {name: {k: round(v, 2) for k, v in d.timings.items()} for name, d in diagnoses.items()},
            "files": files,
            "wall_time_s": round(time.time() - start, 1),
            "config": resolved_config(cfg),
        },
    )
    for name, d in diagnoses.items():
        print()
        print(artifacts_markdown(d.artifacts, f"{name} ({files[name]['source']})") + diagnostics_markdown(d))
    for name in diagnoses:
        summary[f"{name}: files"] = str(Path(files[name]["artifacts_md"]).parent)
    if "comparison" in files:
        summary["comparison"] = f"{files['comparison']['plot']}, {files['comparison']['table']}"
    summary["wall time"] = f"{time.time() - start:.0f} s"
    summary["run directory"] = str(out_dir)
    print_summary(summary)
    return metrics


main = hydra_entry("analyze", run)

if __name__ == "__main__":
    main()
