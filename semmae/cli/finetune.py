"""`semmae-finetune` (also `python -m semmae.finetune`): fine-tune an encoder (ckpt=...) end to end.
Seed -> datamodule (+ fine-tuning augmentation) -> model -> callbacks -> loggers -> trainer -> fit -> test best ->
report (results.json, with the attention callback's artifact_series when it keeps one)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from semmae.analysis.fixes import fix_encoder
from semmae.callbacks.attention_maps import artifact_series
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


def run(cfg: DictConfig) -> dict[str, float]:
    start = begin_run(cfg)
    source = resolve_ckpt(cfg)
    resume = check_ckpt_path(cfg.get("ckpt_path"))
    datamodule = prepare_datamodule(cfg)
    augmentation = instantiate(cfg.augment).apply(datamodule)
    model = instantiate(cfg.model)
    check_resume(cfg, model, resume)
    trainer, loggers = build_trainer(cfg)
    fixes = fix_encoder(cfg, model, datamodule, trainer.strategy.root_device, task="finetune")
    fit(trainer, model, datamodule, cfg, resume)
    test_metrics, best = test_best(trainer, model, datamodule)
    extra = {"augmentation": augmentation, **({"training_free": fixes} if fixes else {})}
    series = artifact_series(trainer)  # shallow_* artifact metrics over fine-tuning (docs/artifacts.md#series)
    if series is not None:
        extra["artifact_series"] = series
    return finish_evaluation("finetune", cfg, trainer, loggers, source, best, test_metrics, start, extra)


main = hydra_entry("finetune", run)

if __name__ == "__main__":
    main()
