"""MAE pretraining as a LightningModule: masking strategy -> encoder on visible patches -> decoder -> loss on
hidden patches; AdamW with the lr scaling rule, per-step warmup + cosine; an online linear probe."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from semmae.data.resident import ResidentBatches
from semmae.errors import ConfigError
from semmae.masking.base import Mask, MaskingStrategy
from semmae.models.mae import MaskedAutoencoder, masked_patch_loss, patchify
from semmae.optim import scaled_lr, warmup_cosine, weight_decay_groups
from semmae.tasks.common import checkpoint_record, effective_batch, settings, steps_per_epoch
from semmae.tasks.online_probe import OnlineProbe
from semmae.tasks.seeding import StepGenerator, mix_seed

# on_before_batch_transfer below only seeds the augmentation; the datamodule's own batch hooks still run.
warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer` in `LightningModule`")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def plain(node: Any) -> Any:
    """OmegaConf containers -> Python dicts/lists (Hydra passes DictConfig; checkpoints should hold plain data)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


VAL_STREAM = 1  # generator stream ids: validation masks are fixed across epochs, training masks are not
TRAIN_STREAM = 0
AUGMENT_STREAM = 3  # the resident training batches' augmentation (semmae-masks uses 2)
TRAIN_METRICS = ("train_loss", "train_probe_acc")  # epoch means that a mid-epoch checkpoint carries


class PretrainTask(L.LightningModule):
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
        super().__init__()
        optim, probe = plain(optim) or {}, plain(probe) or {}  # plain containers: checkpoints load with weights_only
        self.mae = mae
        self.masking = masking
        masking.check(mae.grid_size)  # e.g. a ratio that keeps no patch, more regions than patches
        self.batch_size = int(batch_size)
        self.optim_cfg = settings("model.optim", {
            "blr": 1.5e-4, "weight_decay": 0.05, "betas": (0.9, 0.95), "warmup_epochs": 1.0,
            "min_lr": 0.0, "fused": "auto", "decay_tokens": True}, optim)
        self.probe_cfg = settings("model.probe", {"enabled": True, "lr": 1e-2, "batch_fraction": 0.5, "bf16": "auto"},
                                  probe)
        self.probe = OnlineProbe(mae.encoder.embed_dim, num_classes) if self.probe_cfg["enabled"] else None
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
        self.probe_encoder = self.mae.encoder.forward_cls
        self.probe_optimizer: torch.optim.Optimizer | None = None
        self._probe_opt_state: dict | None = None
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
            self.probe_encoder = torch.compile(self.mae.encoder.forward_cls, dynamic=False)

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
            torch.manual_seed(mix_seed(self.generators.seed, AUGMENT_STREAM, self.global_rank, self.current_epoch,
                                       batch_idx))
        return batch

    # --- masking ----------------------------------------------------------------------------------------------
    def make_mask(self, batch: Mapping[str, Any], stream: int, batch_idx: int) -> Mask:
        images = batch["image"]
        epoch = self.current_epoch if stream == TRAIN_STREAM else 0
        gen = self.generators(images.device, stream, self.global_rank, epoch, batch_idx)
        return self.masking(images, self.mae.grid_size, gen, batch)

    def probe_features(self, images: torch.Tensor) -> torch.Tensor:
        """Detached CLS features of full images. The probe only reads them, so on a CPU with native bf16 the
        forward runs in bf16 (about 1.7x faster); on GPU the trainer's bf16 autocast already applies."""
        bf16 = self.probe_cfg["bf16"]
        if bf16 == "auto":
            bf16 = self.device.type == "cpu" and cpu_has_native_bf16()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(bf16)):
            encode = self.probe_encoder if self.training else self.mae.encoder.forward_cls
            return encode(images).float()

    # --- steps ------------------------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        loss, _ = self.train_forward(images, self.make_mask(batch, TRAIN_STREAM, batch_idx))
        self.train_loss.update(loss.detach())
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)
        if (batch_idx + 1) % max(1, self.trainer.log_every_n_steps) == 0:  # reading the loss syncs with the device
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        total = loss
        if self.probe is not None:
            k = max(2, int(round(images.shape[0] * self.probe_cfg["batch_fraction"])))
            plain = batch.get("image_plain", images)  # the probe sees un-augmented images, like at evaluation
            logits = self.probe(self.probe_features(plain[:k]))
            labels = batch["label"][:k]
            total = total + F.cross_entropy(logits, labels)
            self.train_probe_acc.update(logits.detach(), labels)
            self.log("train/online_probe_acc", self.train_probe_acc, on_step=False, on_epoch=True)
        return total

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        images, labels = batch["image"], batch["label"]
        valid = batch.get("valid")
        mask = self.make_mask(batch, VAL_STREAM, batch_idx)
        loss, pred = self.mae(images, mask)
        if valid is not None and not bool(valid.all()):  # padded samples (uneven DDP split) do not count
            loss = masked_patch_loss(pred, patchify(images, self.mae.patch_size), mask.mask & valid[:, None],
                                     self.mae.norm_pix_loss)
            images, labels = images[valid], labels[valid]
        self.val_loss.update(loss, weight=images.shape[0])
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        if self.probe is not None:
            logits = self.probe(self.probe_features(images))
            self.val_probe_acc.update(logits, labels)
            self.log("val/online_probe_acc", self.val_probe_acc, on_step=False, on_epoch=True, prog_bar=True)

    # --- optimisation -----------------------------------------------------------------------------------------
    def effective_batch(self) -> int:
        return effective_batch(self.trainer, self.batch_size)

    def configure_optimizers(self):
        cfg = self.optim_cfg
        lr = scaled_lr(cfg["blr"], self.effective_batch())
        fused = cfg["fused"]
        if fused == "auto":
            fused = self.device.type == "cuda"
        groups = weight_decay_groups(self.mae, cfg["weight_decay"], decay_tokens=bool(cfg["decay_tokens"]))
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg["betas"]), fused=bool(fused))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch(self.trainer)))
        min_ratio = cfg["min_lr"] / lr if lr > 0 else 0.0
        sched = LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, min_ratio))
        self.hparams["lr"] = lr
        self.hparams["effective_batch"] = self.effective_batch()
        if self.probe is not None:
            self.probe_optimizer = torch.optim.AdamW(self.probe.parameters(), lr=self.probe_cfg["lr"], weight_decay=0.0)
            if self._probe_opt_state is not None:
                self.probe_optimizer.load_state_dict(self._probe_opt_state)
            self.probe_schedule = lambda s: warmup_cosine(s, 0, total, 0.05)  # settles as the features settle
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.probe_optimizer is not None:
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            if scaler is not None:  # fp16: the probe's gradients carry the loss scale too
                for p in self.probe.parameters():
                    if p.grad is not None:
                        p.grad.div_(scaler.get_scale())
            for group in self.probe_optimizer.param_groups:
                group["lr"] = self.probe_cfg["lr"] * self.probe_schedule(self.global_step)
            self.probe_optimizer.step()
            self.probe_optimizer.zero_grad(set_to_none=True)

    # --- checkpoints ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["semmae"] = checkpoint_record(self, self.mae.encoder, "pretrain", model=dict(self.mae.config),
                                                 masking=repr(self.masking))
        if self.probe_optimizer is not None:
            checkpoint["probe_optimizer"] = self.probe_optimizer.state_dict()
        checkpoint["train_metrics"] = {n: {k: v.clone() for k, v in getattr(self, n).metric_state.items()}
                                       for n in TRAIN_METRICS}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._probe_opt_state = checkpoint.get("probe_optimizer")
        for name, state in checkpoint.get("train_metrics", {}).items():  # reset again if a new epoch starts
            getattr(self, name).load_state_dict({k: v.to(self.device) for k, v in state.items()}, strict=False)
