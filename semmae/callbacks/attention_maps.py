"""Attention maps and artifact metrics of the encoder during training (pretraining, linear probing, fine-tuning,
segmentation): every `every_n_epochs` validation epochs and once more at the end of fit, on a fixed set of
validation images (the first ones the module sees in validation, i.e. already normalised):

- figures/attention_blocks_epochNNN.png: rows = images, columns = blocks, each cell the image overlaid with
  that block's received-attention map r' (docs/artifacts.md#notation); figures/cls_attention_epochNNN.png: the
  same for the CLS query's attention to the patches; "final" instead of epochNNN when fit ends between two
  scheduled analyses;
- scalars attn/block_03/sink_ratio, ... (blocks numbered from 1, zero-padded) and attn/shallow_<metric>, sent
  to every logger and put into trainer.callback_metrics, so that the run's results.json holds them;
- the per-block table as a W&B table (key attention/metrics) and as figures/artifacts_epochNNN.md.

The encoder is found by semmae.analysis.find_encoder (`encoder`, else `mae.encoder`, else the first ViT
submodule). Only rank 0 analyses. The callback does not change training: the analysed forward pass runs in eval
mode under no_grad, draws no random numbers, and restores every module's train/eval state and attention path."""

from __future__ import annotations

from pathlib import Path
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from semmae.analysis import ArtifactSettings, find_encoder, measure
from semmae.analysis.artifacts import batch_images
from semmae.analysis.figures import attention_grid, block_titles, display_images
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
    ):
        if every_n_epochs < 1:
            raise ConfigError(f"callbacks.attention_maps.every_n_epochs={every_n_epochs}: must be >= 1")
        if num_images < 1:
            raise ConfigError(f"callbacks.attention_maps.num_images={num_images}: must be >= 1")
        self.every_n_epochs = int(every_n_epochs)
        self.num_images = int(num_images)
        self.figure_images = int(min(figure_images, num_images))
        self.settings = ArtifactSettings(tau=tau, k=k, flat_fraction=flat_fraction, shallow_blocks=shallow_blocks)
        self.vmax = float(vmax) if vmax is not None else 2.0 * self.settings.tau
        self.log_table = bool(log_table)
        self.images: torch.Tensor | None = None
        self._collecting = True
        self.last_step: int | None = None  # global step of the last analysis
        self.last_metrics: dict[str, float] = {}

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

    # --- one analysis ---------------------------------------------------------------------------------------
    @rank_zero_only
    def analyse(self, trainer, pl_module, tag: str) -> None:
        if self.images is None:
            rank_zero_warn("AttentionMapCallback: no validation images seen (is limit_val_batches 0?); skipping")
            return
        encoder = find_encoder(pl_module)
        report = measure(encoder, [self.images], self.settings, keep_images=self.figure_images)
        self.last_step = trainer.global_step
        scalars = report.scalars()
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
        write_text(figures / f"artifacts_{tag}.md", artifacts_markdown(report, step))
        if self.log_table:
            rows = [[i + 1, *(b[m] for m in METRICS)] for i, b in enumerate(report.blocks)]
            for logger in trainer.loggers:
                if hasattr(logger, "log_table"):
                    logger.log_table(key="attention/metrics", columns=["block", *METRICS], data=rows)
