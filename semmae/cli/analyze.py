"""`semmae-analyze` (also `python -m semmae.analyze`): attention maps and artifact metrics (docs/artifacts.md)
of one or more encoders on the first `num_images` full validation images of the `dataset` group.

One encoder -> in the run directory: attention_blocks.png, cls_attention.png, artifacts.json, artifacts.md,
metrics_vs_depth.png. Several (ckpt=[a,b,...]) -> the same five files per encoder in <run>/<n>_<label>/, plus
comparison.png (every metric versus block depth, one line per encoder), comparison.md and comparison.json.
Seed -> encoders -> data -> measure -> figures and tables -> results.json."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from semmae.analysis import ArtifactMeasurement, ArtifactSettings, measure
from semmae.analysis.artifacts import batch_images
from semmae.analysis.figures import attention_grid, block_titles, display_images, metrics_vs_depth
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
    its own geometry (the images are prepared for it). cfg.encoder overrides either."""
    overrides = OmegaConf.to_container(cfg.encoder, resolve=True) if cfg.get("encoder") else {}
    if source == RANDOM:
        geometry = {"img_size": cfg.backbone.img_size, "in_chans": cfg.dataset.channels}
        return build_encoder(None, backbone=OmegaConf.to_container(cfg.backbone, resolve=True),
                                 seed=int(cfg.seed), **{**geometry, **overrides})
    return build_encoder(source, weights_file=cfg.get("ckpt_file") if source.startswith("timm:") else None,
                             root=cfg.paths.root_dir, trust=bool(cfg.get("trust_checkpoint", False)), **overrides)


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


def write_one(report: ArtifactMeasurement, label: str, out: Path, mean, std, vmax: float) -> dict[str, str]:
    """The five files for one encoder in `out`."""
    shown = display_images(report.images, mean, std)
    titles = block_titles(report)
    files = {
        "attention_blocks": save_figure(
            attention_grid(shown, report.received, report.grid_size, f"{label}: received attention r' per block",
                           titles, vmax), out / "attention_blocks.png"),
        "cls_attention": save_figure(
            attention_grid(shown, report.cls, report.grid_size, f"{label}: CLS -> patch attention per block",
                           titles, vmax), out / "cls_attention.png"),
        "artifacts_json": write_json(out / "artifacts.json", {"encoder": label, **report.to_dict()}),
        "artifacts_md": write_text(out / "artifacts.md", artifacts_markdown(report, label)),
        "metrics_vs_depth": save_figure(metrics_vs_depth({label: report}, f"{label}: attention artifacts by block"),
                                        out / "metrics_vs_depth.png"),
    }
    return {k: str(v) for k, v in files.items()}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "encoder"


def run(cfg: DictConfig) -> dict[str, float]:
    start = time.time()
    torch.manual_seed(int(cfg.seed))
    if int(cfg.num_images) < 1 or int(cfg.batch_size) < 1:
        raise ConfigError(f"num_images={cfg.num_images}, batch_size={cfg.batch_size}: both must be >= 1")
    a = cfg.analysis
    settings = ArtifactSettings(tau=a.tau, k=a.k, flat_fraction=a.flat_fraction, shallow_blocks=a.shallow_blocks)
    vmax = float(a.vmax) if a.get("vmax") is not None else 2.0 * settings.tau
    srcs = sources(cfg)
    labels = labels_for(cfg, srcs)
    device = pick_device(str(cfg.device))
    out_dir = Path(cfg.paths.output_dir)
    data = ValImages(cfg)

    reports: dict[str, ArtifactMeasurement] = {}
    files: dict[str, dict[str, str]] = {}
    for n, (source, label) in enumerate(zip(srcs, labels), start=1):
        encoder = analysis_encoder(cfg, source).to(device)
        size, channels = geometry(encoder)
        report = measure(encoder, data.batches(size, channels), settings, keep_images=int(cfg.figure_images))
        dm = data.datamodule(size, channels)
        target = out_dir if len(srcs) == 1 else out_dir / f"{n}_{slug(label)}"
        files[label] = {"source": source, **write_one(report, label, target, getattr(dm, "mean", None),
                                                       getattr(dm, "std", None), vmax)}
        reports[label] = report
        del encoder

    summary: dict[str, Any] = {}
    if len(reports) > 1:
        files["comparison"] = {
            "plot": str(save_figure(metrics_vs_depth(reports, "attention artifacts by block"), out_dir / "comparison.png")),
            "table": str(write_text(out_dir / "comparison.md", comparison_markdown(reports))),
            "json": str(write_json(out_dir / "comparison.json",
                                   {label: {"source": files[label]["source"], **r.to_dict()} for label, r in reports.items()})),
        }
        metrics = {f"{label}/{k}": v for label, r in reports.items() for k, v in r.scalars().items()}
    else:
        metrics = next(iter(reports.values())).scalars()
    write_results(out_dir, {
        "task": "analyze",
        "metrics": metrics,
        "encoders": {label: files[label]["source"] for label in reports},
        "files": files,
        "wall_time_s": round(time.time() - start, 1),
        "config": resolved_config(cfg),
    })
    for label, r in reports.items():
        print()
        print(artifacts_markdown(r, f"{label} ({files[label]['source']})"))
    for label in reports:
        summary[f"{label}: files"] = str(Path(files[label]["artifacts_md"]).parent)
    if "comparison" in files:
        summary["comparison"] = f"{files['comparison']['plot']}, {files['comparison']['table']}"
    summary["wall time"] = f"{time.time() - start:.0f} s"
    summary["run directory"] = str(out_dir)
    print_summary(summary)
    return metrics


main = hydra_entry("analyze", run)

if __name__ == "__main__":
    main()
