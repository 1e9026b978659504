"""`semmae-segment` (also `python -m semmae.segment`): semantic segmentation with a pretrained (or randomly
initialised) ViT encoder, UperNet head. Seed -> datamodule -> model -> callbacks -> loggers -> trainer -> fit ->
test (mIoU, pixel accuracy, per-class IoU on the validation split) -> results.json."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from semmae.analysis.fixes import fix_encoder
from semmae.cli.entry import hydra_entry
from semmae.cli.run_steps import (
    begin_run,
    build_trainer,
    check_ckpt_path,
    check_resume,
    checkpoint_on_disk,
    finish_run,
    fit,
    resolve_ckpt,
    scalar_metrics,
)
from semmae.errors import ConfigError
from semmae.tasks.seg_metrics import iou_table


def format_table(rows: list[dict]) -> str:
    """Per-class IoU as aligned text lines (classes absent from both ground truth and prediction show '-')."""
    width = max(len(r["class"]) for r in rows)

    def pct(v):
        return f"{100 * v:6.2f}" if v is not None else "     -"

    return "\n".join(f"  {r['class']:<{width}}  IoU {pct(r['IoU'])}  Acc {pct(r['Acc'])}" for r in rows)


def run(cfg: DictConfig) -> dict[str, float]:
    start = begin_run(cfg)
    source = resolve_ckpt(cfg)
    ckpt_path = check_ckpt_path(cfg.get("ckpt_path"))
    datamodule = instantiate(cfg.dataset)
    if not hasattr(datamodule, "ignore_index"):
        raise ConfigError(
            f"dataset={cfg.dataset.get('name')} has no label maps: segmentation needs "
            "dataset=fashion_mnist_seg or dataset=ade20k"
        )
    datamodule.prepare_data()
    model = instantiate(cfg.model)
    check_resume(cfg, model, ckpt_path)
    trainer, loggers = build_trainer(cfg)
    fixes = fix_encoder(cfg, model, datamodule, trainer.strategy.root_device, task="segment")
    fit(trainer, model, datamodule, cfg, ckpt_path)
    fit_metrics = scalar_metrics(trainer.callback_metrics)  # testing replaces them: keep the last val/train values
    trainer.test(model, datamodule=datamodule, verbose=False)

    metrics = {**fit_metrics, **scalar_metrics(trainer.callback_metrics)}
    scores = model.scores.get("test")
    table = iou_table(scores, model.class_names()) if scores is not None else []
    ckpt = checkpoint_on_disk(trainer)
    if table and trainer.is_global_zero:
        print("\nPer-class IoU (test = validation split):\n" + format_table(table))
    miou = metrics.get("test/mIoU")
    finish_run(
        "segment",
        cfg,
        trainer,
        loggers,
        start,
        {k: v for k, v in metrics.items() if "/IoU/" not in k},
        fields={
            "encoder": source or "random initialisation",
            "per_class": table,
            "checkpoint": ckpt,
            **({"training_free": fixes} if fixes else {}),
        },
        summary={
            "encoder": source or "random initialisation (ckpt=null)",
            "mIoU": f"{100 * miou:.2f}%" if miou is not None else "-",
            "pixel accuracy": f"{100 * metrics['test/aAcc']:.2f}%" if "test/aAcc" in metrics else "-",
            "mean class accuracy": f"{100 * metrics['test/mAcc']:.2f}%" if "test/mAcc" in metrics else "-",
            "checkpoint": ckpt or "(none written)",
        },
    )
    return metrics


main = hydra_entry("segment", run)

if __name__ == "__main__":
    main()
