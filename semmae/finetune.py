"""`semmae-finetune` (also `python -m semmae.finetune`): fine-tune an encoder (ckpt=...) end to end.
Seed -> datamodule (+ fine-tuning augmentation) -> model -> callbacks -> loggers -> trainer -> fit -> test best ->
report."""

from __future__ import annotations

import time

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from semmae.cli import hydra_entry
from semmae.tasks.evaluation import report, resolve_ckpt, test_best
from semmae.utils.run import check_ckpt_path, configure_torch, instantiate_group, resolved_config


def run(cfg: DictConfig) -> dict[str, float]:
    start = time.time()
    configure_torch()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    source = resolve_ckpt(cfg)
    resume = check_ckpt_path(cfg.get("ckpt_path"))
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    augmentation = instantiate(cfg.augment).apply(datamodule)
    model = instantiate(cfg.model)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    config = resolved_config(cfg)
    for logger in loggers:
        logger.log_hyperparams(config)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    test_metrics, best = test_best(trainer, model, datamodule)
    return report("finetune", cfg, trainer, loggers, source, best, test_metrics, start,
                  {"augmentation": augmentation})


main = hydra_entry("finetune", run)

if __name__ == "__main__":
    main()
