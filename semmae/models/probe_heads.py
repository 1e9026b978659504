"""Probe heads on a frozen encoder. Every head is a pooling of the encoder's tokens followed by MAE's classifier
(ProbeHead: BatchNorm1d without affine parameters + Linear), the shape efficient probing's code gives every probe:

- `linear`: the pooling is fixed (the CLS token or the mean patch token, chosen before the head: it reads the pooled
  feature [B, D]); MAE's linear probe.
- `ep`: efficient probing (Psomas et al. 2025). M learnable queries in the representation space attend to the patch
  tokens themselves (no query or key projection); each query pools its own 1/M slice of the value projection, and
  the M outputs are joined into one D-wide feature. Pooling first and projecting after is the same linear map as
  EP's code (project, then pool) at a fraction of the cost.
- `mhca`: the attentive probe of V-JEPA and AIM: one learned query, a multi-head cross-attention block with query,
  key and value projections on the layer-normed patch tokens, a residual MLP; the baseline EP compares with.

The attentive heads read the patch tokens [B, N, D] and give their attention over them (`attention`), for figures."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from semmae.errors import ConfigError
from semmae.models.heads import ProbeHead

HEADS = ("linear", "ep", "mhca")  # the heads that train; k-NN (semmae.analysis.knn) trains nothing
ATTENTIVE = ("ep", "mhca")  # heads that read patch tokens


class EfficientPooling(nn.Module):
    """EP's pooling: softmax(q k^T / sqrt(D)) over the patch tokens with learned queries q [M, D] and the tokens as
    keys; query m pools slice m of the value projection (D -> D, no bias, as EP's default)."""

    def __init__(self, embed_dim: int, num_queries: int = 32):
        super().__init__()
        if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
            raise ConfigError(f"model.ep.num_queries={num_queries!r}: must be a whole number >= 1")
        if embed_dim % num_queries:
            raise ConfigError(
                f"model.ep.num_queries={num_queries} does not divide the encoder width {embed_dim}: "
                "each query pools an equal slice of it"
            )
        self.num_queries, self.embed_dim = num_queries, embed_dim
        self.scale = embed_dim**-0.5
        self.queries = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
        self.value = nn.Linear(embed_dim, embed_dim, bias=False)

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, N, D] -> each query's attention over them [B, M, N] (rows sum to 1)."""
        return torch.einsum("md,bnd->bmn", self.queries * self.scale, tokens).softmax(dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.attention(tokens) @ tokens  # [B, M, D]: query m's weighted mean of the tokens
        slices = self.value.weight.view(self.num_queries, self.embed_dim // self.num_queries, self.embed_dim)
        return torch.einsum("bmd,mcd->bmc", pooled, slices).flatten(1)  # [B, D]


class CrossAttentionPooling(nn.Module):
    """V-JEPA's attentive pooler with one query: q = W_q query, (k, v) = W_kv LayerNorm(tokens), multi-head
    attention, then query + attention output + MLP (pre-norm). V-JEPA builds an output projection but never applies
    it; it is left out here. Initialised as V-JEPA: truncated normal (std 0.02), zero biases, the MLP's output layer
    scaled by 1/sqrt(2)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ConfigError(f"model.mhca.num_heads={num_heads!r}: must be a whole number >= 1")
        if embed_dim % num_heads:
            raise ConfigError(f"model.mhca.num_heads={num_heads} does not divide the encoder width {embed_dim}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.norm1 = nn.LayerNorm(embed_dim)
        self.q = nn.Linear(embed_dim, embed_dim)
        self.kv = nn.Linear(embed_dim, 2 * embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = Mlp(embed_dim, int(embed_dim * mlp_ratio))
        nn.init.trunc_normal_(self.query, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.mlp.fc2.weight.div_(math.sqrt(2.0))

    def _qkv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = tokens.shape
        h = self.num_heads
        q = self.q(self.query).reshape(1, 1, h, d // h).transpose(1, 2).expand(b, -1, -1, -1)  # [B, H, 1, d/H]
        k, v = self.kv(self.norm1(tokens)).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)  # [B, H, N, d/H]
        return q, k, v

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, N, D] -> the query's attention over them, averaged over the heads [B, 1, N]."""
        q, k, _ = self._qkv(tokens)
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1).mean(dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(tokens)
        out = self.query + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # [B, 1, D]
        return (out + self.mlp(self.norm2(out)))[:, 0]


class AttentiveProbe(nn.Module):
    """A pooling of the patch tokens, then MAE's classifier: patch tokens [B, N, D] -> logits [B, classes]."""

    def __init__(self, pool: nn.Module, embed_dim: int, num_classes: int):
        super().__init__()
        self.pool = pool
        self.classifier = ProbeHead(embed_dim, num_classes)

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pool.attention(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(tokens.float()))


def build_probe_head(
    name: str, embed_dim: int, num_classes: int, num_heads: int, ep: dict | None = None, mhca: dict | None = None
) -> nn.Module:
    """The head called name: linear -> ProbeHead (reads the pooled feature), ep / mhca -> AttentiveProbe (reads the
    patch tokens). ep: {num_queries}; mhca: {num_heads (None: the encoder's num_heads), mlp_ratio}."""
    ep, mhca = dict(ep or {}), dict(mhca or {})
    if name == "linear":
        return ProbeHead(embed_dim, num_classes)
    if name == "ep":
        return AttentiveProbe(EfficientPooling(embed_dim, **ep), embed_dim, num_classes)
    if name == "mhca":
        heads = mhca.pop("num_heads", None) or num_heads
        return AttentiveProbe(CrossAttentionPooling(embed_dim, heads, **mhca), embed_dim, num_classes)
    raise ConfigError(f"model.head={name!r} is not a probe head: choose one of {', '.join((*HEADS, 'knn'))}")
