"""The tokens a probe reads from a chosen encoder block: block k's output on the full image, [B, T, D] with the
prefix tokens (CLS, registers) first. Blocks count from 1. The last block's tokens are taken after the encoder's
final norm (what forward_features gives, and what MAE's probe reads); an earlier block's are its raw output (the
residual stream), since the final norm belongs to the last block's output. `probe_views` names what a probe reads
of them: "pooled/k" (the CLS or mean patch token of block k, float32) and "tokens/k" (all of block k's tokens)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from semmae.errors import ConfigError
from semmae.models.heads import pool_tokens


def check_blocks(blocks: Iterable[int], depth: int) -> list[int]:
    """Sorted, distinct block numbers in 1..depth; anything else is a ConfigError naming the depth."""
    out = sorted(set(blocks))
    for k in out:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= depth:
            raise ConfigError(f"model.block={k!r}: the encoder has blocks 1 to {depth} (last: {depth})")
    if not out:
        raise ConfigError("model.block names no block")
    return out


def resolve_blocks(setting: int | str | Iterable[int], depth: int) -> list[int]:
    """model.block -> the block numbers: "last" (the default), "all", one number k, or a list of them."""
    if setting == "last":
        return [depth]
    if setting == "all":
        return list(range(1, depth + 1))
    if isinstance(setting, str):
        raise ConfigError(f"model.block={setting!r}: a block number 1..{depth}, a list of them, last or all")
    return check_blocks([setting] if isinstance(setting, int) else list(setting), depth)


def block_tokens(encoder: nn.Module, images: torch.Tensor, blocks: Iterable[int]) -> dict[int, torch.Tensor]:
    """{k: block k's output tokens [B, T, D]} of a timm ViT on full images, in one forward that stops at the
    deepest block asked for (timm's forward_intermediates)."""
    depth = len(encoder.blocks)
    blocks = check_blocks(blocks, depth)
    taken = encoder.forward_intermediates(
        images,
        indices=[k - 1 for k in blocks],
        return_prefix_tokens=True,
        norm=False,
        stop_early=True,
        output_fmt="NLC",
        intermediates_only=True,
    )
    out = {}
    for k, item in zip(blocks, taken):
        patches, prefix = item if isinstance(item, tuple) else (item, None)
        tokens = patches if prefix is None else torch.cat([prefix, patches], dim=1)
        out[k] = encoder.norm(tokens) if k == depth else tokens
    return out


def view_name(kind: str, block: int) -> str:
    """The name of a probe's input: kind "pooled" or "tokens", of block (1-based)."""
    return f"{kind}/{block}"


def probe_views(
    encoder: nn.Module,
    images: torch.Tensor,
    blocks: Iterable[int],
    pool: str,
    pooled: bool = True,
    tokens: bool = False,
    token_dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """What the probes read of images, by view_name: for every block, its pooled feature [B, D] (pool_tokens: "token"
    = CLS, "avg" = the mean patch token; float32) if pooled, and all its tokens [B, T, D] in token_dtype if tokens."""
    out = {}
    for k, t in block_tokens(encoder, images, blocks).items():
        if pooled:
            out[view_name("pooled", k)] = pool_tokens(t, pool, encoder.num_prefix_tokens).float()
        if tokens:
            out[view_name("tokens", k)] = t.to(token_dtype)
    return out
