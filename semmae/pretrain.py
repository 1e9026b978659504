"""`semmae-pretrain` (also `python -m semmae.pretrain`): MAE pretraining with the configured masking strategy.
Seed -> datamodule -> model -> callbacks -> loggers -> trainer -> fit -> report."""

from __future__ import annotations

import os
import time
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from semmae.cli import hydra_entry
from semmae.utils.ddp import rerun_this_job
from semmae.utils.run import (
    begin_run,
    build_trainer,
    check_ckpt_path,
    print_summary,
    scalar_metrics,
    wandb_run_dir,
    write_results,
)
from semmae.utils.slurm import resume_checkpoint


def run(cfg: DictConfig) -> dict[str, float]:
    start = begin_run(cfg)
    ckpt_path = resume_checkpoint(cfg.paths.output_dir, check_ckpt_path(cfg.get("ckpt_path")))  # requeued SLURM job
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    model = instantiate(cfg.model)
    for key, producer in model.masking.data_needs().items():  # e.g. segment maps for semantic masking
        datamodule.provide(key, producer, needed_by=model.masking.describe())
    trainer, loggers, config = build_trainer(cfg)
    with rerun_this_job():  # DDP ranks > 0 in a multirun job
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = scalar_metrics(trainer.callback_metrics)
    ckpt = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
    ckpt = ckpt if ckpt and os.path.isfile(ckpt) else ""
    wandb_dir = wandb_run_dir(loggers)
    payload: dict[str, Any] = {
        "task": "pretrain",
        "metrics": metrics,
        "checkpoint": ckpt or None,
        "wandb_run": wandb_dir,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": round(time.time() - start, 1),
        "config": config,
    }
    write_results(cfg.paths.output_dir, payload)
    acc = metrics.get("val/online_probe_acc")
    print_summary({
        "checkpoint": ckpt or "(none written)",
        "W&B offline run": wandb_dir or "(no W&B logger)",
        "online probe accuracy": f"{100 * acc:.2f}%" if acc is not None else "(probe disabled)",
        "val reconstruction loss": f"{metrics['val/loss']:.4f}" if "val/loss" in metrics else "-",
        "wall time": f"{payload['wall_time_s']:.0f} s",
        "run directory": cfg.paths.output_dir,
    })
    return metrics


main = hydra_entry("pretrain", run)

if __name__ == "__main__":
    main()
