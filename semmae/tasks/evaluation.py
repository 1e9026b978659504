"""The part of the linear-probe and fine-tuning entry points that is the same: resolve the encoder source,
test the best checkpoint, and report (console lines + results.json)."""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, open_dict

from semmae.models.checkpoints import resolve_source
from semmae.utils.run import checkpoint_on_disk, finish_run, scalar_metrics


def resolve_ckpt(cfg: DictConfig) -> str | None:
    """cfg.ckpt -> the checkpoint actually used ('latest' becomes a path), written back so that the config the
    run records (and every ${ckpt} interpolation) names it."""
    source = resolve_source(cfg.get("ckpt"), cfg.paths.root_dir)
    with open_dict(cfg):
        cfg.ckpt = source
    return source


def test_best(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule) -> tuple[dict, str]:
    """Test with the best checkpoint (ModelCheckpoint's monitor) if one was written, else with the final weights.
    Returns fit's last metrics (train/val, attention metrics) updated with the test metrics; trainer.test resets
    trainer.callback_metrics, so fit's are read first."""
    fit_metrics = scalar_metrics(trainer.callback_metrics)
    best = checkpoint_on_disk(trainer, "best") or ""
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    return {**fit_metrics, **scalar_metrics(results[0] if results else {})}, best


def report(task: str, cfg: DictConfig, trainer: L.Trainer, loggers: list, source: str | None, best: str,
           test_metrics: dict[str, Any], start: float, extra: dict[str, Any] | None = None) -> dict[str, float]:
    metrics = dict(test_metrics)
    top1, top5 = metrics.get("test/top1"), metrics.get("test/top5")
    finish_run(task, cfg, trainer, loggers, start, metrics,
               fields={"encoder_checkpoint": source or "random initialisation", "best_checkpoint": best or None,
                       **(extra or {})},
               summary={
                   "encoder": source or "random initialisation (ckpt=null)",
                   "test top-1": f"{100 * top1:.2f}%" if top1 is not None else "-",
                   "test top-5": f"{100 * top5:.2f}%" if top5 is not None else "-",
                   "best checkpoint": best or "(none written)",
               })
    return metrics
