"""MAE pretraining as a LightningModule: masking strategy -> encoder on visible patches -> decoder -> loss on
hidden patches; the optimiser of model.optim (conf/optim/adamw_mae_pretrain.yaml: AdamW, lr scaling rule, per-step
warmup + cosine) over weight-decay groups, and an online linear probe that is one more group of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics

from semmae.data.resident import ResidentBatches
from semmae.errors import ConfigError
from semmae.masking.base import Mask, MaskingStrategy, batch_progress, training_progress
from semmae.masking.generator import StepGenerator, mix_seed
from semmae.models.heads import ProbeHead
from semmae.models.mae import MaskedAutoencoder, masked_patch_loss, patchify
from semmae.optim import weight_decay_groups
from semmae.optim.schedule import WarmupDecay
from semmae.tasks.base import TaskBase, plain
from semmae.tasks.settings import settings

VAL_STREAM = 1  # generator stream ids: validation masks are fixed across epochs, training masks are not
TRAIN_STREAM = 0
AUGMENT_STREAM = 3  # the resident training batches' augmentation (semmae-masks uses 2)
TRAIN_METRICS = ("train_loss", "train_probe_acc")  # epoch means that a mid-epoch checkpoint carries


class PretrainTask(TaskBase):
    kind = "pretrain"
    optim_group = "adamw_mae_pretrain"
    optim_keys = ("weight_decay", "decay_tokens")

    def __init__(
        self,
        mae: MaskedAutoencoder,
        masking: MaskingStrategy,
        num_classes: int,
        batch_size: int,
        optim: Mapping[str, Any] | None = None,
        probe: Mapping[str, Any] | None = None,
        seed: int = 0,
        compile: bool | str = "auto",
    ):
        super().__init__(optim, batch_size)
        probe = plain(probe) or {}  # plain containers: checkpoints load with weights_only
        self.mae = mae
        self.masking = masking
        masking.check(mae.grid_size)  # e.g. a ratio that keeps no patch, more regions than patches
        self.probe_cfg = settings(
            "model.probe", {"enabled": True, "lr": 1e-2, "batch_fraction": 0.5, "bf16": "auto"}, probe
        )
        # the online probe (solo-learn's idea): ProbeHead on the detached CLS feature of the full, unmasked image
        self.probe = ProbeHead(mae.encoder.embed_dim, num_classes) if self.probe_cfg["enabled"] else None
        self.generators = StepGenerator(seed)
        self.train_loss = torchmetrics.MeanMetric(nan_strategy="disable")
        self.val_loss = torchmetrics.MeanMetric(nan_strategy="disable")
        acc = dict(task="multiclass", num_classes=num_classes)
        self.train_probe_acc = torchmetrics.Accuracy(**acc)
        self.val_probe_acc = torchmetrics.Accuracy(**acc)
        if compile not in (True, False, "auto"):
            raise ConfigError(f"model.compile must be true, false or auto, got {compile!r}")
        self.compile_model = compile
        self.train_forward = self.mae.forward  # replaced by a compiled version in configure_model if asked
        self.full_encoder = self.mae.encoder.forward_features  # the probe's and semantic_features' forward
        self.save_hyperparameters(ignore=["mae", "masking"])
        self.hparams["masking"] = repr(masking)
        self.hparams["model"] = dict(mae.config)

    def configure_model(self) -> None:
        """torch.compile the training forward (encoder on visible tokens, decoder, loss) and the probe's full-image
        forward. Shapes are static (the visible count is fixed by the mask ratio), so no dynamic shapes. "auto"
        compiles on GPUs only: on a CPU the compile time (~50 s) outweighs the gain of a short run (+8%)."""
        enabled = self.device.type == "cuda" if self.compile_model == "auto" else self.compile_model
        if enabled and self.train_forward == self.mae.forward:
            self.train_forward = torch.compile(self.mae.forward, dynamic=False)
            self.full_encoder = torch.compile(self.mae.encoder.forward_features, dynamic=False)

    # --- resuming mid-epoch exactly ------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Resident batches (in an order seeded by the epoch) skip those the resumed epoch has already trained on."""
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if isinstance(dataset, ResidentBatches):
            progress = self.trainer.fit_loop.epoch_loop.batch_progress
            dataset.start_fn = lambda: progress.current.ready  # read at the epoch's first batch: 0 unless resumed

    def on_train_epoch_start(self) -> None:
        """A new epoch's means start from zero; a mid-epoch resume (no epoch start) keeps the checkpoint's sums."""
        for name in TRAIN_METRICS:
            getattr(self, name).reset()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Resident training batches (uint8) are augmented right after this hook, from the global RNG: seed it by
        (seed, rank, epoch, batch), as the masks are, so a resumed run draws the crops of an uninterrupted one."""
        images = batch.get("image") if isinstance(batch, dict) else None
        if self.trainer.training and images is not None and images.dtype == torch.uint8:
            batch_idx = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
            torch.manual_seed(
                mix_seed(self.generators.seed, AUGMENT_STREAM, self.global_rank, self.current_epoch, batch_idx)
            )
        return batch

    # --- masking ----------------------------------------------------------------------------------------------
    def masking_inputs(self, batch: Mapping[str, Any]) -> tuple[Mapping[str, Any], torch.Tensor | None]:
        """The batch as the strategy reads it, and the full-image tokens if they were computed for it. Strategies with
        uses_progress get "progress" (docs/masking.md#training-progress: a host float from global_step, no sync);
        those whose reads_features(progress) holds get "features", the patch tokens of the full augmented image
        (full_image_tokens), unless the batch has them."""
        if self.masking.uses_progress and "progress" not in batch:
            batch = {**batch, "progress": training_progress(self.global_step, self.total_steps())}
        if "features" in batch or not self.masking.reads_features(batch_progress(batch)):
            return batch, None
        tokens = self.full_image_tokens(batch["image"])
        return {**batch, "features": tokens[:, self.mae.encoder.num_prefix_tokens :]}, tokens

    def make_mask(self, batch: Mapping[str, Any], stream: int, batch_idx: int) -> Mask:
        images = batch["image"]
        epoch = self.current_epoch if stream == TRAIN_STREAM else 0
        gen = self.generators(images.device, stream, self.global_rank, epoch, batch_idx)
        return self.masking(images, self.mae.grid_size, gen, self.masking_inputs(batch)[0])

    def full_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Normed tokens [B, P + N, D] of full images, detached (no_grad) and float32: the online probe reads the CLS
        token, masking=semantic_features the patch tokens. Only read, so the forward may run in bf16
        (model.probe.bf16, the base's policy)."""
        bf16 = self.bf16_enabled(self.probe_cfg["bf16"])
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            encode = self.full_encoder if self.training else self.mae.encoder.forward_features
            return encode(images).float()

    def probe_features(self, images: torch.Tensor) -> torch.Tensor:
        """CLS features of full images (full_image_tokens)."""
        return self.full_image_tokens(images)[:, 0]

    # --- steps ------------------------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        batch, tokens = self.masking_inputs(batch)
        loss, _ = self.train_forward(images, self.make_mask(batch, TRAIN_STREAM, batch_idx))
        self.train_loss.update(loss.detach())
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        if (batch_idx + 1) % max(1, self.trainer.log_every_n_steps) == 0:  # reading the loss syncs with the device
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        total = loss
        if self.probe is not None:
            k = max(2, int(round(images.shape[0] * self.probe_cfg["batch_fraction"])))
            if tokens is not None:  # share semantic_features' forward: the probe then reads the augmented view
                features = tokens[:k, 0]
            else:  # the probe sees un-augmented images, like at evaluation
                features = self.probe_features(batch.get("image_plain", images)[:k])
            logits = self.probe(features)
            labels = batch["label"][:k]
            total = total + F.cross_entropy(logits, labels)
            self.train_probe_acc.update(logits.detach(), labels)
            self.log("train/online_probe_acc", self.train_probe_acc, on_step=False, on_epoch=True)
        return total

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        images, labels = batch["image"], batch["label"]
        valid = batch.get("valid")
        batch, tokens = self.masking_inputs(batch)
        cls = None if tokens is None else tokens[:, 0]  # the probe shares semantic_features' forward
        mask = self.make_mask(batch, VAL_STREAM, batch_idx)
        loss, pred = self.mae(images, mask)
        if valid is not None and not bool(valid.all()):  # padded samples (uneven DDP split) do not count
            loss = masked_patch_loss(
                pred, patchify(images, self.mae.patch_size), mask.mask & valid[:, None], self.mae.norm_pix_loss
            )
            images, labels = images[valid], labels[valid]
            cls = None if cls is None else cls[valid]
        self.val_loss.update(loss, weight=images.shape[0])
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        if self.probe is not None:
            logits = self.probe(self.probe_features(images) if cls is None else cls)
            self.val_probe_acc.update(logits, labels)
            self.log("val/online_probe_acc", self.val_probe_acc, on_step=False, on_epoch=True, prog_bar=True)

    # --- optimisation -----------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """The MAE's weight-decay groups, then the online probe's: its own lr (model.probe.lr) and schedule (no
        warmup, cosine to 5%: it settles as the features settle), no weight decay, AdamW's default betas, and no
        gradient clipping (trainer.gradient_clip_val clips the MAE's gradients only)."""
        cfg = self.optim_cfg
        groups = weight_decay_groups(self.mae, cfg["weight_decay"], decay_tokens=bool(cfg["decay_tokens"]))
        if self.probe is not None:
            groups.append(
                {
                    "params": list(self.probe.parameters()),
                    "lr": self.probe_cfg["lr"],
                    "weight_decay": 0.0,
                    "betas": (0.9, 0.999),
                    "clip": False,
                    "schedule": WarmupDecay(self.total_steps(), warmup_steps=0, min_ratio=0.05),
                }
            )
        return groups

    # --- checkpoints ------------------------------------------------------------------------------------------
    def checkpoint_encoder(self) -> torch.nn.Module:
        return self.mae.encoder

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"model": dict(self.mae.config), "masking": repr(self.masking)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["train_metrics"] = {
            n: {k: v.clone() for k, v in getattr(self, n).metric_state.items()} for n in TRAIN_METRICS
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for name, state in checkpoint.get("train_metrics", {}).items():  # reset again if a new epoch starts
            getattr(self, name).load_state_dict({k: v.to(self.device) for k, v in state.items()}, strict=False)
