"""Attention maps and artifact metrics of the encoder during training (pretraining, linear probing, fine-tuning,
segmentation): every `every_n_epochs` validation epochs and once more at the end of fit, on a fixed set of
validation images (the first ones the module sees in validation, i.e. already normalised):

- figures/attention_blocks_epochNNN.png: rows = images, columns = blocks, each cell the image overlaid with
  that block's received-attention map r' (docs/artifacts.md#notation); figures/cls_attention_epochNNN.png: the
  same for the CLS query's attention to the patches; "final" instead of epochNNN when fit ends between two
  scheduled analyses;
- scalars attn/block_03/sink_ratio, ... (blocks numbered from 1, zero-padded) and attn/shallow_<metric>, sent
  to every logger and put into trainer.callback_metrics, so that the run's results.json holds them;
- with `parts` (default heads and cls, the diagnostics one attention capture gives; docs/artifacts.md#diagnostics):
  the head-sink taxonomy and the CLS statistics as scalars attn/block_03/nop_heads, attn/block_03/cls_cls, ...,
  attn/shallow_<name>, and figures/sink_classes_epochNNN.png (blocks x heads); the heavier diagnostics (outliers,
  invariance, asymmetry) are semmae-analyze's;
- the per-block table as a W&B table (key attention/metrics; the heads as attention/heads) and as
  figures/artifacts_epochNNN.md;
- with `series_at` set (fine-tuning's default, conf/callbacks/finetune_default.yaml): a series of the model-level
  shallow_* metrics over training, measured before the first training step, at each point of `series_at`
  (floats in (0, 1]: fractions of the run's optimizer steps; integers: global steps) and at the end of fit, each
  entry {"at", "step", "epoch", "shallow_sink_ratio", ...}; the series points are also logged as
  attn/shallow_<metric> at their step. `artifact_series(trainer)` returns it (semmae-finetune writes it to
  results.json as "artifact_series"); it is kept in checkpoints, so a resumed run continues it.

The encoder is found by semmae.analysis.find_encoder (`encoder`, else `mae.encoder`, else the first ViT
submodule). Only rank 0 analyses. The callback does not change training: the analysed forward pass runs in eval
mode under no_grad, draws no random numbers, and restores every module's train/eval state and attention path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from semmae.analysis import ArtifactSettings, find_encoder
from semmae.analysis.artifacts import batch_images
from semmae.analysis.diagnostic_tables import diagnostics_markdown
from semmae.analysis.diagnostics import ATTENTION_ONLY, DiagnosticSettings, diagnose
from semmae.analysis.figures import attention_grid, block_titles, display_images, sink_class_grid
from semmae.analysis.metrics import METRICS
from semmae.analysis.tables import artifacts_markdown, write_text
from semmae.errors import ConfigError
from semmae.utils.plotting import log_image, save_figure


class AttentionMapCallback(L.Callback):
    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 64,
        figure_images: int = 4,
        tau: float = 4.0,
        k: float = 5.0,
        flat_fraction: float = 0.25,
        shallow_blocks: int | list[int] | None = None,
        vmax: float | None = None,
        log_table: bool = True,
        series_at: list[float | int] | None = None,
        parts: list[str] | None = ATTENTION_ONLY,
        sinks: dict | None = None,
        outliers: dict | None = None,
        invariance: dict | None = None,
        asymmetry: dict | None = None,
    ):
        if every_n_epochs < 1:
            raise ConfigError(f"callbacks.attention_maps.every_n_epochs={every_n_epochs}: must be >= 1")
        if num_images < 1:
            raise ConfigError(f"callbacks.attention_maps.num_images={num_images}: must be >= 1")
        self.every_n_epochs = int(every_n_epochs)
        self.num_images = int(num_images)
        self.figure_images = int(min(figure_images, num_images))
        self.settings = ArtifactSettings(tau=tau, k=k, flat_fraction=flat_fraction, shallow_blocks=shallow_blocks)
        parts = tuple(parts or ())
        heavy = [p for p in parts if p not in ATTENTION_ONLY]
        if heavy:
            raise ConfigError(
                f"callbacks.attention_maps.parts={list(parts)}: the callback runs the attention-only "
                f"diagnostics {list(ATTENTION_ONLY)}; {heavy} run in semmae-analyze"
            )
        # outliers, invariance and asymmetry come with the shared analysis node; only semmae-analyze reads them
        self.diagnostics = DiagnosticSettings.from_config({**vars(self.settings), "sinks": sinks, "parts": parts})
        self.vmax = float(vmax) if vmax is not None else 2.0 * self.settings.tau
        self.log_table = bool(log_table)
        self.images: torch.Tensor | None = None
        self._collecting = True
        self.last_step: int | None = None  # global step of the last analysis
        self.last_metrics: dict[str, float] = {}
        self.series_at = check_series_at(series_at)
        self.series: list[dict[str, Any]] = []
        self._targets: list[tuple[int, float | int]] = []  # (global step, the series_at entry it came from)

    # --- the fixed validation images ------------------------------------------------------------------------
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self._collecting or dataloader_idx != 0:
            return
        images = batch_images(batch)
        if images is None:
            return
        have = 0 if self.images is None else self.images.shape[0]
        part = images[: self.num_images - have].detach().clone()
        self.images = part if self.images is None else torch.cat([self.images, part])
        if self.images.shape[0] >= self.num_images:
            self._collecting = False

    def on_validation_epoch_end(self, trainer, pl_module):
        self._collecting = False  # the set stays fixed even if the first epoch had fewer images than asked
        if trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.analyse(trainer, pl_module, f"epoch{trainer.current_epoch:03d}")

    def on_train_end(self, trainer, pl_module):
        if self.last_step != trainer.global_step:
            self.analyse(trainer, pl_module, "final")
        if self.series_at is not None:
            self.series_point(trainer, pl_module, "end")

    # --- the series over training -----------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        if self.series_at is None:
            return
        total = trainer.estimated_stepping_batches
        steps = {}
        for at in self.series_at:
            if isinstance(at, float):
                if not (isinstance(total, int) or float(total).is_integer()):
                    raise ConfigError(
                        f"callbacks.attention_maps.series_at={list(self.series_at)}: fractions of "
                        "training need a known number of steps (set trainer.max_steps or max_epochs)"
                    )
                step = round(at * int(total))
            else:
                step = at
            steps.setdefault(step, at)
        # points at or before the current step are covered by the start point (or by the run this one resumes)
        self._targets = sorted((step, at) for step, at in steps.items() if step > trainer.global_step)
        self.series_point(trainer, pl_module, "start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self._targets or trainer.global_step < self._targets[0][0]:
            return
        reached = [at for step, at in self._targets if step <= trainer.global_step]
        self._targets = [(step, at) for step, at in self._targets if step > trainer.global_step]
        self.series_point(trainer, pl_module, reached[-1])

    @rank_zero_only
    def series_point(self, trainer, pl_module, at: str | float | int) -> None:
        """One entry of the series: the model-level numbers of the encoder now (at most one entry a step): the
        shallow_* metrics and, with the callback's diagnostics, their shallow_* and head-class totals."""
        step = trainer.global_step
        if any(entry["step"] == step for entry in self.series):
            return
        if at == "end" and self.last_step == step and self.last_metrics:
            model = model_level(self.last_metrics)
        else:
            if not self._ensure_images(trainer):
                rank_zero_warn("AttentionMapCallback: no validation images for the artifact series; skipping a point")
                return
            model = model_level(diagnose(find_encoder(pl_module), lambda: [self.images], self.diagnostics).scalars())
            scalars = {f"attn/{k}": v for k, v in model.items()}
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)
                logger.save()
        self.series.append({"at": at, "step": step, "epoch": trainer.current_epoch, **model})

    def _ensure_images(self, trainer) -> bool:
        """Before the first validation (a run without a sanity check), the fixed set is read from the datamodule's
        validation split in its evaluation view, which is what the validation loop will show; the global RNG
        state is restored afterwards (a DataLoader draws its base seed from it)."""
        if self.images is not None:
            return True
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not callable(getattr(dm, "eval_batches", None)):
            return False
        device = trainer.strategy.root_device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            parts = [
                images
                for batch in dm.eval_batches("val", device, limit=self.num_images)
                if (images := batch_images(batch)) is not None
            ]
        if not parts:
            return False
        self.images = torch.cat(parts)[: self.num_images].detach().clone()
        self._collecting = False
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"series": list(self.series)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # merged by step with what this process measured: a resumed fit starts empty and continues the checkpoint's
        # series; trainer.test(ckpt_path=best) after fit restores an older state, which must not drop later points
        merged = {entry["step"]: entry for entry in state_dict.get("series", [])}
        merged.update({entry["step"]: entry for entry in self.series})
        self.series = [merged[step] for step in sorted(merged)]

    # --- one analysis ---------------------------------------------------------------------------------------
    @rank_zero_only
    def analyse(self, trainer, pl_module, tag: str) -> None:
        if self.images is None:
            rank_zero_warn("AttentionMapCallback: no validation images seen (is limit_val_batches 0?); skipping")
            return
        encoder = find_encoder(pl_module)
        diagnosis = diagnose(encoder, lambda: [self.images], self.diagnostics, keep_images=self.figure_images)
        report = diagnosis.artifacts
        self.last_step = trainer.global_step
        scalars = diagnosis.scalars()
        self.last_metrics = scalars
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
            logger.save()
        for key, value in scalars.items():  # so that the entry point's final metrics (results.json) hold them
            trainer.callback_metrics[key] = torch.tensor(value)

        dm = getattr(trainer, "datamodule", None)
        shown = display_images(report.images, getattr(dm, "mean", None), getattr(dm, "std", None))
        figures = Path(trainer.default_root_dir) / "figures"
        step = f"{tag}, step {trainer.global_step}"
        for name, key, maps, what in (
            ("attention_blocks", "attention/received", report.received, "received attention r' per block"),
            ("cls_attention", "attention/cls", report.cls, "CLS -> patch attention per block"),
        ):
            fig = attention_grid(shown, maps, report.grid_size, f"{what} ({step})", block_titles(report), self.vmax)
            path = save_figure(fig, figures / f"{name}_{tag}.png")
            log_image(trainer, key, path)
        if diagnosis.heads is not None:
            path = save_figure(
                sink_class_grid(diagnosis.heads, f"attention sinks by block and head ({step})"),
                figures / f"sink_classes_{tag}.png",
            )
            log_image(trainer, "attention/sink_classes", path)
        write_text(figures / f"artifacts_{tag}.md", artifacts_markdown(report, step) + diagnostics_markdown(diagnosis))
        if self.log_table:
            rows = [[i + 1, *(b[m] for m in METRICS)] for i, b in enumerate(report.blocks)]
            heads = [
                [i + 1, h, b.classes[h], b.positions[h], b.mass[h], b.routed_frac[h], b.ratio_out[h]]
                for i, b in enumerate(diagnosis.heads or [])
                for h in range(len(b.classes))
            ]
            for logger in trainer.loggers:
                if hasattr(logger, "log_table"):
                    logger.log_table(key="attention/metrics", columns=["block", *METRICS], data=rows)
                    if heads:
                        logger.log_table(
                            key="attention/heads",
                            data=heads,
                            columns=["block", "head", "class", "sink_on", "mass", "routed_frac", "ratio_out"],
                        )


def model_level(scalars: dict[str, float]) -> dict[str, float]:
    """The model-level attn/* scalars (no block_NN), without their prefix: shallow_sink_ratio, nop_heads, ..."""
    return {k.split("/", 1)[1]: v for k, v in scalars.items() if k.startswith("attn/") and "/block_" not in k}


def check_series_at(series_at: Any) -> tuple[float | int, ...] | None:
    """series_at -> a tuple of fractions (floats in (0, 1]) and global steps (integers >= 0); None = no series."""
    if series_at is None:
        return None
    if isinstance(series_at, (int, float, str)):
        series_at = [series_at]
    out: list[float | int] = []
    for at in series_at:
        ok_step = isinstance(at, int) and not isinstance(at, bool) and at >= 0
        ok_fraction = isinstance(at, float) and 0 < at <= 1
        if not (ok_step or ok_fraction):
            raise ConfigError(
                f"callbacks.attention_maps.series_at: {at!r} is neither a fraction of training (a float "
                "in (0, 1], e.g. 0.25) nor a global step (an integer >= 0, e.g. 500)"
            )
        out.append(at)
    return tuple(out)


def artifact_series(trainer) -> list[dict[str, Any]] | None:
    """The shallow_* series of the trainer's AttentionMapCallback (docs/artifacts.md#series), or None when it has
    none (no such callback, or series_at unset)."""
    for cb in trainer.callbacks:
        if isinstance(cb, AttentionMapCallback) and cb.series_at is not None:
            return list(cb.series)
    return None
