"""Probing a frozen encoder as a LightningModule: one probe head (model.head: `linear`, MAE's BatchNorm1d without
affine + Linear on the CLS or mean patch token; `ep`, efficient probing; `mhca`, V-JEPA's cross-attention probe; see
semmae.models.probe_heads) on one block's tokens (model.block, the last by default, after the final norm), trained by
the optimiser of model.optim (conf/optim/lars_probe.yaml: LARS, lr scaling rule, per-step warmup + cosine; MAE's
linear-probe protocol, which efficient probing's code applies to every head it compares); top-1 / top-5. Batches
carry either images (the encoder runs, without gradients) or cached features ("feature", see
semmae.data.feature_cache), so the same module trains on both. k-NN trains nothing: `semmae-linprobe
model.head=knn` classifies the cached features directly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics

from semmae.errors import ConfigError
from semmae.models.block_tokens import probe_views, resolve_blocks, view_name
from semmae.models.encoder import ViTEncoder
from semmae.models.export import head_layout
from semmae.models.heads import POOLS
from semmae.models.probe_heads import ATTENTIVE, HEADS, build_probe_head
from semmae.tasks.base import ClassifierEvaluation, plain
from semmae.tasks.settings import settings

EP_DEFAULTS = {"num_queries": 32}
MHCA_DEFAULTS = {"num_heads": None, "mlp_ratio": 4.0}
KNN_DEFAULTS = {"neighbours": [20, 10, 50], "temperature": 0.07}  # the first k is reported as test/top1
CACHE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def head_input(head: str) -> str:
    """What a head reads: "tokens" (the attentive heads) or "pooled" (linear, k-NN)."""
    return "tokens" if head in ATTENTIVE else "pooled"


class ProbeTask(ClassifierEvaluation):
    kind = "linprobe"
    optim_group = "lars_probe"
    optim_keys = ("weight_decay",)

    def __init__(
        self,
        encoder: ViTEncoder,
        num_classes: int,
        batch_size: int,
        head: str = "linear",
        pool: str = "token",
        block: int | str = "last",
        ep: Mapping[str, Any] | None = None,
        mhca: Mapping[str, Any] | None = None,
        knn: Mapping[str, Any] | None = None,
        feature_cache: bool | str = "auto",
        cache_dtype: str = "bfloat16",
        cache_max_ram_share: float = 0.5,
        bf16: bool | str = "auto",
        optim: Mapping[str, Any] | None = None,
        cache_limits: Mapping[str, Any] | None = None,
    ):
        if not isinstance(head, str) or head not in HEADS:
            raise ConfigError(
                f"model.head={plain(head)!r}: a probe task trains one of {', '.join(HEADS)} "
                "(semmae-linprobe runs lists and knn)"
            )
        super().__init__(num_classes, optim, batch_size)
        # plain containers in the frame: save_hyperparameters records them, and checkpoints load with weights_only
        ep, mhca, knn, block = plain(ep), plain(mhca), plain(knn), plain(block)
        self.cache_limits = cache_limits = plain(cache_limits) or {}  # the trainer's: the feature cache reads them
        if pool not in POOLS:
            raise ConfigError(f"model.pool must be one of {POOLS}, got {pool!r}")
        if cache_dtype not in CACHE_DTYPES:
            raise ConfigError(f"model.cache_dtype={cache_dtype!r}: one of {', '.join(CACHE_DTYPES)}")
        blocks = resolve_blocks(block, len(encoder.blocks))
        if len(blocks) != 1:
            raise ConfigError(
                f"model.block={block!r}: a probe task reads one block (semmae-linprobe runs the layer-wise sweep)"
            )
        self.block = blocks[0]
        self.encoder = encoder.requires_grad_(False).eval()
        self.head_name, self.pool = head, pool
        self.ep_cfg = settings("model.ep", EP_DEFAULTS, ep)
        self.mhca_cfg = settings("model.mhca", MHCA_DEFAULTS, mhca)
        self.knn_cfg = settings("model.knn", KNN_DEFAULTS, knn)  # read by semmae-linprobe, not trained
        self.head = build_probe_head(
            head, encoder.embed_dim, num_classes, encoder.blocks[0].attn.num_heads, ep=self.ep_cfg, mhca=self.mhca_cfg
        )
        self.view = view_name(head_input(head), self.block)
        self.feature_cache = feature_cache
        self.cache_dtype = CACHE_DTYPES[cache_dtype]
        self.cache_max_ram_share = cache_max_ram_share
        self.bf16 = bf16
        self.train_loss = torchmetrics.MeanMetric()
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.save_hyperparameters(ignore=["encoder"])
        self.hparams["encoder"] = dict(encoder.config)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: no drop path, no dropout, ever
        return self

    # --- features ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> what the head reads, from the frozen encoder: the pooled feature [B, D] (float32) or every
        token of the block [B, T, D] (in model.cache_dtype)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16_enabled(self.bf16)):
            views = probe_views(
                self.encoder,
                images,
                [self.block],
                self.pool,
                pooled=self.view.startswith("pooled"),
                tokens=self.view.startswith("tokens"),
                token_dtype=self.cache_dtype,
            )
        return views[self.view]

    def features(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["feature"] if "feature" in batch else self.encode(batch["image"])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.head_name in ATTENTIVE:
            features = features[:, self.encoder.num_prefix_tokens :]  # the attentive heads read the patch tokens
        return self.head(features)

    @torch.no_grad()
    def attention(self, images: torch.Tensor) -> torch.Tensor:
        """The attentive head's attention over the patches of images [B, M, P] (M queries; MHCA: M = 1)."""
        if self.head_name not in ATTENTIVE:
            raise ConfigError(f"model.head={self.head_name} has no attention over the patches")
        return self.head.attention(self.encode(images)[:, self.encoder.num_prefix_tokens :].float())

    # --- steps ---------------------------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.logits(self.features(batch))
        loss = F.cross_entropy(logits, batch["label"])
        self.train_loss.update(loss.detach())
        self.train_acc.update(logits.detach(), batch["label"])
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/top1", self.train_acc, on_step=False, on_epoch=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True)
        return loss

    def eval_logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.logits(self.features(batch))

    # --- optimisation and checkpoints -----------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """The head alone (the encoder is frozen)."""
        return [{"params": list(self.head.parameters()), "weight_decay": self.optim_cfg["weight_decay"]}]

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"head": head_layout(self.encoder), "pool": self.pool, "probe": self.head_name, "block": self.block}
