"""Gated attention: timm's Attention with a sigmoid gate on each head's output, a training-time control for attention
sinks beside registers (backbone.attn_gate=true).

Per query token i and head h, the head's attention output is scaled by g[i, h] = sigmoid(x_i . w_h + b_h), where x_i
is the block's normed input (the attention's input): the head-wise gate placed after the scaled dot-product attention
and before the output projection (Qiu et al., "Gated Attention for Large Language Models", 2025, G1 head-wise). A
head can then write nothing for a query without parking its attention on a sink token. Its weights are
`attn.gate.weight [num_heads, dim]` and `attn.gate.bias [num_heads]`; timm's own elementwise gate (`gated=True`)
has one gate per channel instead, `[dim, dim]`.

The gate starts half open and the same for every token (zero weights, bias GATE_BIAS = 0: sigmoid 0.5), where the
paper's gate starts too (its gate rows are initialised like the query projection, near zero) and where the sigmoid is
steepest. A gate that starts saturated open (sigmoid ~ 1) hardly moves in a short pretraining and leaves the encoder
ungated in effect. No random number is drawn for the gate, and no initialisation of linear layers (timm's, MAE's)
redraws it: with the same seed, a gated model's other weights are those of the ungated one, so the two arms of the
control start from the same weights. The fused (SDPA) path stays the training path; with fused_attn off, the
probabilities leave through attn_drop as in timm's Attention, where attention capture reads them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers.attention import Attention, maybe_add_mask, resolve_self_attn_mask
from torch import nn

GATE_BIAS = 0.0  # sigmoid(0) = 0.5


class HeadGate(nn.Module):
    """x [..., dim] -> sigmoid(x W^T + b) [..., heads]. A linear map, but not an nn.Linear: initialisers that walk a
    model's nn.Linear layers leave it as init_weights sets it."""

    def __init__(self, dim: int, num_heads: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_heads, dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(num_heads, device=device, dtype=dtype))
        self.init_weights()

    def init_weights(self) -> None:
        """Half open and the same for every token; draws no random number. timm's ViT initialisation calls it."""
        nn.init.zeros_(self.weight)
        nn.init.constant_(self.bias, GATE_BIAS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias).sigmoid()


class GatedAttention(Attention):
    """timm's multi-head self-attention (qkv, fused_attn, attn_drop, proj, num_heads unchanged) with a head-wise
    sigmoid gate `gate` (HeadGate: dim -> num_heads) on each head's output before `proj`."""

    def __init__(self, dim: int, num_heads: int = 8, **kwargs):
        if kwargs.get("gated") or kwargs.get("scale_norm"):
            raise ValueError(
                "GatedAttention has its own head-wise gate: timm's gated=True and scale_norm=True do not apply"
            )
        dd = {k: kwargs[k] for k in ("device", "dtype") if k in kwargs}
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.gate = HeadGate(dim, self.num_heads, **dd)

    def init_weights(self) -> None:
        self.gate.init_weights()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        gate = self.gate(x).transpose(1, 2).unsqueeze(-1)  # [B, H, N, 1]: one value per query and head
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = maybe_add_mask(attn, resolve_self_attn_mask(n, attn, attn_mask, is_causal))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = (x * gate).transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))


def has_gated_attention(state: dict[str, torch.Tensor], num_heads: int | None = None) -> bool:
    """Whether a ViT state dict (timm names) holds this head-wise gate: blocks.0.attn.gate.weight of [heads, dim]
    (timm's elementwise gate is [dim, dim]; with num_heads unknown, fewer rows than columns tells them apart)."""
    w = state.get("blocks.0.attn.gate.weight")
    if w is None or w.ndim != 2:
        return False
    return int(w.shape[0]) == num_heads if num_heads else w.shape[0] < w.shape[1]
