"""`semmae-pretrain` (also `python -m semmae.pretrain`): MAE pretraining with the configured masking strategy.
Seed -> datamodule -> model -> callbacks -> loggers -> trainer -> fit -> report."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from semmae.cli.entry import hydra_entry
from semmae.cli.run_steps import (
    begin_run,
    build_trainer,
    check_ckpt_path,
    check_resume,
    checkpoint_on_disk,
    finish_run,
    fit,
    prepare_datamodule,
    scalar_metrics,
)
from semmae.utils.ddp import rerun_this_job
from semmae.utils.slurm import resume_checkpoint


def run(cfg: DictConfig) -> dict[str, float]:
    start = begin_run(cfg)
    ckpt_path = resume_checkpoint(cfg.paths.output_dir, check_ckpt_path(cfg.get("ckpt_path")))  # requeued SLURM job
    datamodule = prepare_datamodule(cfg)
    model = instantiate(cfg.model)
    check_resume(cfg, model, ckpt_path)
    for key, producer in model.masking.data_needs().items():  # e.g. segment maps for semantic masking
        datamodule.provide(key, producer, needed_by=model.masking.describe())
    trainer, loggers = build_trainer(cfg)
    with rerun_this_job():  # DDP ranks > 0 in a multirun job
        fit(trainer, model, datamodule, cfg, ckpt_path)

    metrics = scalar_metrics(trainer.callback_metrics)
    ckpt = checkpoint_on_disk(trainer)
    acc = metrics.get("val/online_probe_acc")
    finish_run("pretrain", cfg, trainer, loggers, start, metrics, fields={"checkpoint": ckpt}, summary={
        "checkpoint": ckpt or "(none written)",
        "online probe accuracy": f"{100 * acc:.2f}%" if acc is not None else
        "(probe disabled)" if not cfg.model.probe.enabled else "(not measured: no validation epoch ran)",
        "val reconstruction loss": f"{metrics['val/loss']:.4f}" if "val/loss" in metrics else "-",
    })
    return metrics


main = hydra_entry("pretrain", run)

if __name__ == "__main__":
    main()
