"""`semmae-linprobe` (also `python -m semmae.linprobe`): linear probe of a frozen encoder (ckpt=...).
Seed -> datamodule -> model -> callbacks -> loggers -> trainer -> (feature cache) -> fit -> test best -> report."""

from __future__ import annotations

import time

from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from semmae.analysis.fixes import fix_encoder
from semmae.cli.entry import hydra_entry
from semmae.cli.run_steps import (
    begin_run,
    build_trainer,
    check_ckpt_path,
    check_resume,
    finish_evaluation,
    fit,
    prepare_datamodule,
    resolve_ckpt,
    test_best,
)
from semmae.data.feature_cache import FeatureDataModule


def run(cfg: DictConfig) -> dict[str, float]:
    start = begin_run(cfg)
    source = resolve_ckpt(cfg)
    resume = check_ckpt_path(cfg.get("ckpt_path"))
    datamodule = prepare_datamodule(cfg)
    model = instantiate(cfg.model)
    check_resume(cfg, model, resume)
    trainer, loggers = build_trainer(cfg)
    fixes = fix_encoder(cfg, model, datamodule, trainer.strategy.root_device, task="linprobe")

    cache = model.feature_cache
    if cache == "auto":
        cache = bool(getattr(datamodule, "in_memory", False))  # in-memory datasets
    extract_s = None
    if cache:
        rank_zero_info("Feature cache: encoding the train and validation images once (no augmentation) ...")
        t0 = time.time()
        model.to(trainer.strategy.root_device)
        datamodule = FeatureDataModule.from_images(datamodule, model.encode, model.device, cfg.seed)
        extract_s = round(time.time() - t0, 1)
        rank_zero_info(f"Feature cache: {len(datamodule.splits['train'][1])} + {len(datamodule.splits['val'][1])} "
                       f"images encoded in {extract_s:.0f} s")
    fit(trainer, model, datamodule, cfg, resume)
    test_metrics, best = test_best(trainer, model, datamodule)
    return finish_evaluation("linprobe", cfg, trainer, loggers, source, best, test_metrics, start,
                  {"feature_cache": bool(cache), "feature_extraction_s": extract_s,
                   **({"training_free": fixes} if fixes else {})})


main = hydra_entry("linprobe", run)

if __name__ == "__main__":
    main()
