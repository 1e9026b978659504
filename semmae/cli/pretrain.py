"""`semmae-pretrain` (also `python -m semmae.pretrain`): MAE pretraining with the configured masking strategy.
Seed -> datamodule -> model -> callbacks -> loggers -> trainer -> fit -> k-NN check -> report. The k-NN check
(knn_eval) says what pretraining bought: DINO's weighted k-NN top-1 of the trained encoder next to that of the
randomly initialised encoder the run started from, on the same images."""

from __future__ import annotations

import time
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from semmae.analysis.knn import check_knn, knn_accuracy
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
from semmae.data.feature_cache import extract_features
from semmae.data.loaders import subset_indices
from semmae.models.heads import pool_tokens
from semmae.models.loading import random_encoder
from semmae.tasks.base import bf16_enabled, plain
from semmae.tasks.settings import settings
from semmae.utils.ddp import rerun_this_job
from semmae.utils.slurm import resume_checkpoint

KNN_EVAL = {
    "enabled": True,
    "train_images": 10000,
    "val_images": 5000,
    "neighbours": 20,
    "temperature": 0.07,
    "pool": "token",
    "bf16": "auto",
}


@torch.no_grad()
def knn_check(cfg: DictConfig, model: Any, datamodule: Any, fast_dev_run: bool = False) -> dict[str, Any]:
    """k-NN top-1 (knn_eval: k, temperature, pooled feature) of the trained encoder and of its initialisation
    (random_encoder with the run's seed: the encoder the run started from), each with train_images of the training
    split (a seeded subset, un-augmented) as its memory and the first val_images of the validation split as queries;
    a fast dev run one evaluation batch of each. -> {"knn/top1", "knn/random_init_top1", "knn/seconds", ...}; {} when
    knn_eval.enabled is false."""
    s = settings("knn_eval", KNN_EVAL, plain(cfg.get("knn_eval")))
    if not s["enabled"]:
        return {}
    trained = model.mae.encoder
    device = next(trained.parameters()).device
    most = datamodule.eval_batch_size if fast_dev_run else None
    n_train = min(int(s["train_images"]), datamodule.split_size("train"), most or int(s["train_images"]))
    n_val = min(int(s["val_images"]), datamodule.split_size("val"), most or int(s["val_images"]))
    if n_train < int(
        s["neighbours"]
    ):  # too few images to vote: the run itself is fine, the check says why it is absent
        return {
            "knn/skipped": f"not measured: {n_train} training images, fewer than knn_eval.neighbours={s['neighbours']}"
        }
    ks = check_knn([s["neighbours"]], s["temperature"], n_train, key="knn_eval")
    indices = {"train": subset_indices(datamodule.split_size("train"), n_train, cfg.seed), "val": list(range(n_val))}
    twin = random_encoder({**plain(cfg.backbone), **trained.config}, seed=cfg.seed).to(device)
    bf16 = bf16_enabled(s["bf16"], device)
    t0, out = time.time(), {}
    for name, encoder in (("top1", trained), ("random_init_top1", twin)):
        was_training = encoder.training
        encoder.eval()

        def encode(images, encoder=encoder):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return pool_tokens(encoder.forward_features(images), s["pool"], encoder.num_prefix_tokens).float()

        train, val = (extract_features(encode, datamodule, split, device, indices[split]) for split in ("train", "val"))
        acc = knn_accuracy(train[0], train[1], val[0], val[1], int(cfg.dataset.num_classes), ks, s["temperature"])
        out[f"knn/{name}"] = acc[ks[0]]["top1"]
        encoder.train(was_training)
    return {**out, "knn/seconds": round(time.time() - t0, 1), "knn/train_images": n_train, "knn/val_images": n_val}


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
    knn = knn_check(cfg, model, datamodule, bool(trainer.fast_dev_run)) if trainer.is_global_zero else {}
    metrics.update(scalar_metrics(knn))
    ckpt = checkpoint_on_disk(trainer)
    acc = metrics.get("val/online_probe_acc")
    finish_run(
        "pretrain",
        cfg,
        trainer,
        loggers,
        start,
        metrics,
        fields={"checkpoint": ckpt},
        summary={
            "checkpoint": ckpt or "(none written)",
            "online probe accuracy": f"{100 * acc:.2f}%"
            if acc is not None
            else "(probe disabled)"
            if not cfg.model.probe.enabled
            else "(not measured: no validation epoch ran)",
            "val reconstruction loss": f"{metrics['val/loss']:.4f}" if "val/loss" in metrics else "-",
            **knn_lines(cfg, knn),
        },
    )
    return metrics


def knn_lines(cfg: DictConfig, knn: dict[str, Any]) -> dict[str, str]:
    """The summary's k-NN line: the trained encoder's top-1 next to its initialisation's."""
    if not knn:
        return {"k-NN top-1": "(knn_eval.enabled=false)"}
    if "knn/skipped" in knn:
        return {"k-NN top-1": f"({knn['knn/skipped']})"}
    k = cfg.knn_eval.neighbours
    trained, init = 100 * knn["knn/top1"], 100 * knn["knn/random_init_top1"]
    return {
        f"k-NN top-1 (k={k})": f"{trained:.2f}% (random init: {init:.2f}%; {knn['knn/train_images']:,} train / "
        f"{knn['knn/val_images']:,} val images, {knn['knn/seconds']:.0f} s)"
    }


main = hydra_entry("pretrain", run)

if __name__ == "__main__":
    main()
