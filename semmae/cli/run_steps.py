"""The steps every entry point takes the same way: seed, build callbacks, loggers and the trainer from config, check
paths and the checkpoint a run resumes, resolve the encoder source, test the best checkpoint, and report the run
(console lines + results.json in the run directory)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from semmae.callbacks.finite_loss import FiniteLoss
from semmae.callbacks.model_summary import ParameterSummary
from semmae.callbacks.requeue import RequeueOnSignal
from semmae.errors import CheckpointError, ConfigError
from semmae.models.sources import resolve_source
from semmae.utils.atomic import atomic_write_json
from semmae.utils.checkpoint_io import AtomicCheckpointIO
from semmae.utils.safe_load import load_file


def configure_torch() -> None:
    """TF32 matmuls on Ampere+ GPUs (bf16 autocast covers the rest); nothing changes on CPU."""
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")


def begin_run(cfg: DictConfig) -> float:
    """The start of every training entry point: torch settings and seeds; -> the start time (for wall_time_s)."""
    start = time.time()
    configure_torch()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return start


def build_trainer(cfg: DictConfig) -> tuple[Any, list[Any]]:
    """Callbacks and loggers from their groups, the trainer with them, and the resolved config logged to every
    logger as hyperparameters; -> (trainer, loggers). Whatever the groups say, every run stops at a non-finite loss
    (FiniteLoss), saves and stops at SIGTERM (RequeueOnSignal), summarises the model without Lightning's FLOPs
    (ParameterSummary), and writes its checkpoints atomically (AtomicCheckpointIO)."""
    callbacks = instantiate_group(cfg.get("callbacks"))
    always = [(FiniteLoss, FiniteLoss), (RequeueOnSignal, RequeueOnSignal)]
    if cfg.trainer.get("enable_model_summary", True) is not False:
        always.append((ModelSummary, ParameterSummary))
    for kind, default in always:
        if not any(isinstance(cb, kind) for cb in callbacks):
            callbacks.append(default())
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    config = resolved_config(cfg)
    for logger in loggers:
        logger.log_hyperparams(config)
    return trainer, loggers


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """A group of named objects (callbacks, loggers), each with a _target_, -> list of objects."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if isinstance(node, DictConfig) and "_target_" in node]


def prepare_datamodule(cfg: DictConfig) -> Any:
    """The dataset group's datamodule with its data found and checked (prepare_data), and the class count it found
    written into the config where the config leaves it open (dataset.num_classes=null: ImageFolder data), so that
    every ${dataset.num_classes} the model reads is the data's."""
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    found = getattr(datamodule, "num_classes", None)
    if found and "num_classes" in cfg.dataset and cfg.dataset.num_classes is None:
        with open_dict(cfg):
            cfg.dataset.num_classes = int(found)
    return datamodule


def check_ckpt_path(path: str | None) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(
            f"ckpt_path={path} does not exist: pass the path of a .ckpt file (e.g. <run>/checkpoints/last.ckpt)"
        )
    return str(path)


def check_resume(cfg: DictConfig, model: Any, path: str | None) -> None:
    """The checkpoint a run resumes from (if any) is readable (safely: weights only, unless the user typed
    trust_checkpoint=true) and holds this model's tensors in their shapes; else one line that says what differs,
    instead of Lightning's key dump. Called before the trainer is built, so nothing else is printed first."""
    if path is None:
        return
    ckpt = load_file(path, trust=bool(cfg.get("trust_checkpoint", False)))
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"ckpt_path={path} is not a training checkpoint of a semmae run (no state_dict): "
            "ckpt_path resumes a run from its <run>/checkpoints/last.ckpt; to start from an "
            "encoder's weights, use ckpt=PATH with semmae-linprobe / -finetune / -segment"
        )
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(want[k].shape)}"
        for k in want
        if k in state and torch.is_tensor(state[k]) and state[k].shape != want[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(items)} {label} (e.g. {', '.join(items[:2])})"
            for label, items in (
                ("tensors of another shape, checkpoint vs model", shapes),
                ("missing", missing),
                ("unexpected", unexpected),
            )
            if items
        ]
        kind = (ckpt.get("semmae") or {}).get("kind", "unknown") if isinstance(ckpt.get("semmae"), dict) else "unknown"
        raise CheckpointError(
            f"ckpt_path={path} does not fit this run's model ({kind} checkpoint; {'; '.join(parts)}): "
            "resume with the settings the run was started with (its .hydra/overrides.yaml)"
        )


def fit(trainer: Any, model: Any, datamodule: Any, cfg: DictConfig, ckpt_path: str | None = None) -> None:
    """trainer.fit, resuming from ckpt_path (checked by check_resume); Lightning unpickles it in full only if the
    user typed trust_checkpoint=true."""
    try:
        trainer.fit(
            model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not bool(cfg.get("trust_checkpoint", False))
        )
    except ValueError as exc:  # torch's optimizer.load_state_dict: the checkpoint's parameter groups differ
        if ckpt_path is None or "parameter group" not in str(exc):
            raise
        raise CheckpointError(
            f"ckpt_path={ckpt_path} holds the optimiser state of other parameter groups than this run's ({exc}); "
            "resume with the settings the run was started with (its .hydra/overrides.yaml), or start a new run "
            "that reads its encoder with ckpt=PATH"
        ) from exc


def wandb_run_dir(loggers: list[Any]) -> str | None:
    """The directory of the W&B run (offline-run-* or run-*), if a W&B logger is attached."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            exp = logger.experiment
            run_dir = getattr(exp, "dir", None)  # a no-op method on DDP ranks > 0 (Lightning's dummy experiment)
            return str(Path(run_dir).parent) if isinstance(run_dir, str) and run_dir else None
    return None


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError, RuntimeError):
            continue
        if math.isfinite(f):
            out[k] = f
    return dict(sorted(out.items()))


@rank_zero_only
def write_results(output_dir: str | Path, payload: dict[str, Any]) -> Path:
    """results.json in the run directory, written atomically."""
    return atomic_write_json(Path(output_dir) / "results.json", payload)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


@rank_zero_only
def print_summary(lines: dict[str, Any]) -> None:
    width = max(len(k) for k in lines)
    print()
    for key, value in lines.items():
        print(f"{key:<{width}} : {value}")


def checkpoint_on_disk(trainer: Any, which: str = "last") -> str | None:
    """The last (or best, by ModelCheckpoint's monitor) checkpoint the run wrote, or None if there is none on disk."""
    path = getattr(trainer.checkpoint_callback, f"{which}_model_path", "") if trainer.checkpoint_callback else ""
    return path if path and os.path.isfile(path) else None


def finish_run(
    task: str,
    cfg: DictConfig,
    trainer: Any,
    loggers: list[Any],
    start: float,
    metrics: dict[str, float],
    fields: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ending every entry point shares: results.json (the task, its metrics and fields, the W&B run, epochs,
    steps, wall time and the resolved config) and the console summary (the task's lines, then the W&B run, wall
    time and run directory). -> the payload written."""
    wandb_dir = wandb_run_dir(loggers)
    payload: dict[str, Any] = {
        "task": task,
        "metrics": metrics,
        **(fields or {}),
        "wandb_run": wandb_dir,
        "epochs": trainer.current_epoch if trainer is not None else None,  # None: no one training run
        "global_step": trainer.global_step if trainer is not None else None,
        "wall_time_s": round(time.time() - start, 1),
        "config": resolved_config(cfg),
    }
    write_results(cfg.paths.output_dir, payload)
    print_summary(
        {
            **(summary or {}),
            "W&B offline run": wandb_dir or "(no W&B logger)",
            "wall time": f"{payload['wall_time_s']:.0f} s",
            "run directory": cfg.paths.output_dir,
        }
    )
    return payload


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


def finish_evaluation(
    task: str,
    cfg: DictConfig,
    trainer: L.Trainer,
    loggers: list,
    source: str | None,
    best: str,
    test_metrics: dict[str, Any],
    start: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, float]:
    metrics = dict(test_metrics)
    top1, top5 = metrics.get("test/top1"), metrics.get("test/top5")
    finish_run(
        task,
        cfg,
        trainer,
        loggers,
        start,
        metrics,
        fields={
            "encoder_checkpoint": source or "random initialisation",
            "best_checkpoint": best or None,
            **(extra or {}),
        },
        summary={
            "encoder": source or "random initialisation (ckpt=null)",
            "test top-1": f"{100 * top1:.2f}%" if top1 is not None else "-",
            "test top-5": f"{100 * top5:.2f}%" if top5 is not None else "-",
            "best checkpoint": best or "(none written)",
        },
    )
    return metrics
