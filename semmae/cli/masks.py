"""`semmae-masks` (also `python -m semmae.masks`): masking strategies side by side on real images.
Seed -> datamodule -> strategies -> masks on `num_images` validation images -> statistics -> figure -> report.

Statistics per strategy (results.json): mean number of 4-connected components of the visible patches, the
fraction of image regions that are entirely visible (regions: the semantic strategy's segmentation, its own regions
for semantic itself, so the numbers are comparable), and the per-position visibility frequency (min, max, min/max;
1 = every position equally likely), and the share of the visible patches that are flat background (a patch is flat
when its pixel std is at most the reference semantic strategy's flat_threshold x the image's pixel std, the test
flat_last applies to regions). Strategies that read the training progress (semantic_stratified) are drawn at
progress 0, the start of training; semantic_features at the end of its warm-up, on the patch tokens of the encoder
that `features_ckpt` names (a pretraining checkpoint, `latest`, ...; null: a randomly initialised encoder of the
backbone, whose tokens are little more than the patch embedding and position). The figure (figures/masks.png):
rows = images, columns = strategies; visible patches show the image, hidden ones are greyed; the semantic
strategies' region map gets a column of its own (once for strategies whose regions are the same)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from semmae.analysis.mask_shapes import flat_patches, mask_statistics, masks_figure
from semmae.cli.entry import hydra_entry
from semmae.cli.run_steps import prepare_datamodule, print_summary, resolved_config, write_results
from semmae.errors import ConfigError
from semmae.masking import MaskingStrategy, SemanticMasking
from semmae.masking.base import keep_lowest
from semmae.masking.generator import StepGenerator
from semmae.models.loading import build_encoder
from semmae.models.sources import resolve_source

STREAM = 2  # generator stream of this tool (pretraining uses 0 for training, 1 for validation)
PROGRESS = 0.0  # training progress given to strategies that read it (semantic_stratified): the start of training


def build_strategies(cfg: DictConfig) -> dict[str, MaskingStrategy]:
    unknown = [name for name in cfg.show if name not in cfg.strategies]
    if unknown:
        raise ConfigError(
            f"show={list(cfg.show)} names {unknown}, which are not under strategies "
            f"({', '.join(cfg.strategies)}); add one with +masking@strategies.NAME=OPTION"
        )
    if not cfg.show:
        raise ConfigError("show is empty: name at least one strategy, e.g. show=[random,semantic]")
    ratio = {} if cfg.mask_ratio is None else {"mask_ratio": float(cfg.mask_ratio)}
    return {name: instantiate(cfg.strategies[name], **ratio) for name in cfg.show}


def validation_batch(datamodule, num_images: int) -> dict[str, torch.Tensor]:
    """The first num_images validation images in their evaluation view, with whatever the batch carries."""
    parts = [
        {k: v for k, v in batch.items() if torch.is_tensor(v)}
        for batch in datamodule.eval_batches("val", limit=num_images)
    ]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def draw_progress(strategy: MaskingStrategy) -> float:
    """The training progress a strategy is drawn at: PROGRESS, or the end of semantic_features' warm-up (before it,
    that strategy is random masking)."""
    return max(PROGRESS, float(getattr(strategy, "warmup", 0.0)))


def patch_features(cfg: DictConfig, images: torch.Tensor, grid: tuple[int, int], chunk: int = 256) -> torch.Tensor:
    """[M, N, D] patch tokens of the full images from the encoder of cfg.features_ckpt (random init for null), what
    PretrainTask passes semantic_features in the batch."""
    source = resolve_source(cfg.features_ckpt, cfg.paths.root_dir)
    encoder = build_encoder(
        source,
        backbone=cfg.backbone,
        root=cfg.paths.root_dir,
        trust=bool(cfg.trust_checkpoint),
        seed=int(cfg.seed),
        in_chans=images.shape[1],
    ).eval()
    if tuple(encoder.grid_size) != tuple(grid):
        raise ConfigError(
            f"features_ckpt={cfg.features_ckpt} has a {encoder.grid_size[0]}x{encoder.grid_size[1]} "
            f"patch grid, the masks here a {grid[0]}x{grid[1]} one: choose its backbone"
        )
    with torch.no_grad():
        tokens = [encoder.forward_features(images[i : i + chunk]) for i in range(0, len(images), chunk)]
    return torch.cat(tokens)[:, encoder.num_prefix_tokens :]


def apply(
    strategy: MaskingStrategy,
    reference: SemanticMasking,
    batch: dict[str, torch.Tensor],
    grid: tuple[int, int],
    seed: int,
    chunk: int = 256,
) -> dict[str, torch.Tensor]:
    """Masks [M, N] (True = hidden) and reference regions [M, N] over all images, in chunks. The reference regions
    use the strategy's own generator seed, so for semantic masking they are exactly the regions it used."""
    gens = StepGenerator(seed)
    masks, regions = [], []
    for i, start in enumerate(range(0, len(batch["image"]), chunk)):
        part = {k: v[start : start + chunk] for k, v in batch.items()}
        if strategy.uses_progress:
            part["progress"] = draw_progress(strategy)
        images = part["image"]
        if isinstance(strategy, SemanticMasking):
            plan = strategy.plan(images, grid, gens(images.device, STREAM, 0, 0, i), part)
            masks.append(keep_lowest(plan.scores, strategy.n_keep(grid[0] * grid[1])).mask)
            regions.append(plan.regions)
        else:
            masks.append(strategy(images, grid, gens(images.device, STREAM, 0, 0, i), part).mask)
            regions.append(reference.regions(images, grid, gens(images.device, STREAM, 0, 0, i), part))
    return {"mask": torch.cat(masks), "regions": torch.cat(regions)}


def run(cfg: DictConfig) -> dict[str, Any]:
    start = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    img_size, patch = int(cfg.backbone.img_size), int(cfg.backbone.patch_size)
    if img_size % patch:
        raise ConfigError(f"backbone.img_size={img_size} is not divisible by patch size {patch}")
    grid = (img_size // patch, img_size // patch)
    if int(cfg.num_images) < 1 or int(cfg.num_shown) < 1:
        raise ConfigError("num_images and num_shown must be >= 1")
    datamodule = prepare_datamodule(cfg)
    strategies = build_strategies(cfg)
    semantic = [s for s in strategies.values() if isinstance(s, SemanticMasking)]
    reference = semantic[0] if semantic else SemanticMasking()
    for strategy in strategies.values():
        for key, producer in strategy.data_needs().items():
            datamodule.provide(key, producer, needed_by=strategy.describe())
    batch = validation_batch(datamodule, int(cfg.num_images))
    if any(s.reads_features(draw_progress(s)) for s in strategies.values()):
        batch["features"] = patch_features(cfg, batch["image"], grid)
    if reference.segmenter != "color_kmeans" and "segments" not in batch:
        reference = SemanticMasking()

    flat = flat_patches(batch["image"], grid, reference.flat_threshold)
    results, stats = {}, {}
    for name, strategy in strategies.items():
        results[name] = apply(strategy, reference, batch, grid, int(cfg.seed))
        stats[name] = {
            "strategy": repr(strategy),
            **({"progress": draw_progress(strategy)} if strategy.uses_progress else {}),
            **mask_statistics(results[name]["mask"], results[name]["regions"], grid, flat),
        }
        results[name]["own_regions"] = isinstance(strategy, SemanticMasking)
    out = Path(cfg.paths.output_dir)
    k = min(int(cfg.num_shown), len(batch["image"]))
    figure = masks_figure(
        batch["image"][:k],
        {n: {**r, "mask": r["mask"][:k], "regions": r["regions"][:k]} for n, r in results.items()},
        stats,
        grid,
        patch,
        getattr(datamodule, "mean", (0.5,)),
        getattr(datamodule, "std", (0.5,)),
        out / "figures" / "masks.png",
    )
    payload = {
        "task": "masks",
        "images": len(batch["image"]),
        "grid": list(grid),
        "reference_regions": repr(reference),
        "flat_threshold": reference.flat_threshold,
        "flat_patches_fraction": round(flat.float().mean().item(), 4),
        "figure": str(figure),
        "strategies": stats,
        "wall_time_s": round(time.time() - start, 1),
        "config": resolved_config(cfg),
    }
    write_results(out, payload)
    print_summary(
        {
            **{
                name: f"{s['visible_components_mean']:5.1f} visible components, "
                f"{100 * s['regions_fully_visible_fraction']:4.1f}% regions fully visible, "
                f"position min/max {s['position_visibility_min_max_ratio']:.2f}, "
                f"{100 * s['visible_flat_fraction']:4.1f}% visible flat"
                for name, s in stats.items()
            },
            "figure": figure,
            "run directory": out,
        }
    )
    return stats


main = hydra_entry("masks", run)

if __name__ == "__main__":
    main()
