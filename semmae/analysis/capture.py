"""Capturing what every encoder block does on full, unmasked images: its attention probabilities [B, H, T, T]
and its output tokens [B, T, D].

Training keeps timm's fused attention (SDPA), which never materialises the probabilities. Only the analysed
batch takes the explicit path: inside `attention_capture` every block's `attn.fused_attn` is switched off, so
timm computes softmax(q k^T * scale) itself, and a forward hook on `attn.attn_drop` (the identity in eval mode)
reads the probabilities as they leave it. On exit the flags, the hooks and every module's train/eval state are
restored exactly as they were; nothing random is drawn (eval mode: no dropout, no drop-path)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from semmae.errors import ConfigError


@dataclass
class Capture:
    """What one forward pass left behind; lists are indexed by block (0-based; block 1 is attn[0])."""

    attn: list[torch.Tensor]  # [B, H, T, T] attention probabilities, rows sum to 1
    tokens: list[torch.Tensor]  # [B, T, D] block outputs (the residual stream, before the final norm)
    output: torch.Tensor  # forward_features(images): [B, T, D] after the final norm
    num_prefix_tokens: int  # CLS (and registers) first, then the patch tokens in row-major order
    num_reg_tokens: int = 0  # registers among the prefix tokens (tokens 1..num_reg_tokens; timm's reg_token)

    @property
    def patch_slice(self) -> slice:
        """The patch tokens of a token axis: CLS and registers excluded."""
        return slice(self.num_prefix_tokens, None)


def is_vit(module: nn.Module) -> bool:
    """A timm-style ViT: patch embedding, blocks with attention, forward_features."""
    return (
        isinstance(module, nn.Module)
        and hasattr(module, "blocks")
        and hasattr(module, "patch_embed")
        and callable(getattr(module, "forward_features", None))
    )


def find_encoder(module: nn.Module) -> nn.Module:
    """The ViT encoder inside a task's LightningModule, by this rule (tasks written later should follow it):

    1. the module itself, if it is a ViT;
    2. else its `encoder` attribute;
    3. else `mae.encoder` (the pretraining task);
    4. else the first ViT among its submodules, in `named_modules()` order.
    A ViT here is any timm `VisionTransformer` (semmae's `ViTEncoder` included): it has `patch_embed`, `blocks`
    and `forward_features`."""
    if is_vit(module):
        return module
    for path in ("encoder", "mae.encoder"):
        obj = module
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if obj is not None and is_vit(obj):
            return obj
    for _, sub in module.named_modules():
        if is_vit(sub):
            return sub
    raise ConfigError(
        f"no ViT encoder found in {type(module).__name__}: attention maps need an `encoder` attribute, "
        "`mae.encoder`, or a timm VisionTransformer submodule"
    )


def _check_blocks(encoder: nn.Module) -> list[nn.Module]:
    blocks = list(encoder.blocks)
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        if attn is None or not hasattr(attn, "fused_attn") or not isinstance(getattr(attn, "attn_drop", None), nn.Module):
            raise ConfigError(
                f"block {i + 1} of {type(encoder).__name__} has no timm Attention (attn.fused_attn and attn.attn_drop): "
                "attention capture supports timm ViT blocks only"
            )
    return blocks


@contextmanager
def attention_capture(encoder: nn.Module) -> Iterator[tuple[list, list]]:
    """Within the block, forward passes of `encoder` fill two lists (one slot per block): attention probabilities
    and block outputs of the latest pass. The encoder is in eval mode and on the explicit attention path."""
    blocks = _check_blocks(encoder)
    fused = [blk.attn.fused_attn for blk in blocks]
    training = [(m, m.training) for m in encoder.modules()]
    attn: list[torch.Tensor | None] = [None] * len(blocks)
    tokens: list[torch.Tensor | None] = [None] * len(blocks)
    handles = []

    def keep(store: list, i: int):
        def hook(_module, _inputs, output):
            store[i] = output.detach()

        return hook

    try:
        encoder.eval()
        for i, blk in enumerate(blocks):
            blk.attn.fused_attn = False
            handles.append(blk.attn.attn_drop.register_forward_hook(keep(attn, i)))
            handles.append(blk.register_forward_hook(keep(tokens, i)))
        yield attn, tokens
    finally:
        for h in handles:
            h.remove()
        for blk, flag in zip(blocks, fused):
            blk.attn.fused_attn = flag
        for m, flag in training:
            m.training = flag


def capture(encoder: nn.Module, images: torch.Tensor) -> Capture:
    """Run `encoder.forward_features` on full images [B, C, H, W] and return every block's attention and output.
    The token axis is [CLS, registers, patches]: metrics over patches start at num_prefix_tokens."""
    with torch.no_grad(), attention_capture(encoder) as (attn, tokens):
        output = encoder.forward_features(images)
    missing = [i + 1 for i, a in enumerate(attn) if a is None]
    if missing:
        raise ConfigError(f"blocks {missing} of {type(encoder).__name__} did not run their attention during capture")
    return Capture(
        attn=[a.float() for a in attn],
        tokens=[t.float() for t in tokens],
        output=output,
        num_prefix_tokens=int(getattr(encoder, "num_prefix_tokens", 1)),
        num_reg_tokens=int(getattr(encoder, "num_reg_tokens", 0)),
    )
