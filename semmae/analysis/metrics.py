"""Artifact metrics of docs/artifacts.md, as pure functions: tensors in, tensors out (one value per image where
the metric is per image; the caller averages over images).

Notation: A [B, H, T, T] attention probabilities of one block on full images (query rows, key columns), with
T = prefix + P: the prefix tokens (CLS, then registers) first, then the P patch tokens in row-major order.
Received attention of patch key j in image b: r_bj = mean over heads and all T queries of A[b, :, :, j];
normalised so that the fair share is 1: r'_bj = r_bj * P / sum_k r_bk (sum over patch keys only).

Every function that tells prefix from patch tokens takes `num_prefix_tokens` (default 1: CLS only): with
registers (CLS + N registers) the patch metrics leave all of them out, and prefix_share counts all of them."""

from __future__ import annotations

import math

import torch

from semmae.errors import ConfigError

METRICS = (
    "sink_ratio",
    "artifact_fraction",
    "attention_entropy",
    "high_norm_fraction",
    "sink_position_consistency",
    "flat_patch_share",
    "prefix_share",
    "norm_ratio",
)


def _check_prefix(num_prefix_tokens: int, num_tokens: int) -> int:
    n = int(num_prefix_tokens)
    if not 0 <= n < num_tokens:
        raise ConfigError(
            f"num_prefix_tokens={num_prefix_tokens}: must be between 0 and the token count - 1 ({num_tokens - 1})"
        )
    return n


def received_attention(attn: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """A [B, H, T, T] -> r' [B, P]: each image's received attention per patch key, mean 1 over patches."""
    r = attn[..., _check_prefix(num_prefix_tokens, attn.shape[-1]) :].float().mean(dim=(1, 2))
    return r * r.shape[-1] / r.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)


def cls_attention(attn: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """A [B, H, T, T] -> [B, P]: the CLS query's attention to each patch (mean over heads), scaled like r' so that
    an even spread over the patches is 1."""
    c = attn[:, :, 0, _check_prefix(num_prefix_tokens, attn.shape[-1]) :].float().mean(dim=1)
    return c * c.shape[-1] / c.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(c.dtype).tiny)


def sink_ratio(r_norm: torch.Tensor) -> torch.Tensor:
    """r' [B, P] -> [B]: the most-attended patch's share relative to the fair share (1 = perfectly even)."""
    return r_norm.max(dim=-1).values


def artifact_fraction(r_norm: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """r' [B, P] -> [B]: fraction of the image's patch tokens with r' > tau."""
    return (r_norm > tau).float().mean(dim=-1)


def attention_entropy(attn: torch.Tensor) -> torch.Tensor:
    """A [B, H, T, T] -> [B]: mean over heads and queries of H(A[b, h, i, :]) / log T, in [0, 1]
    (1 = every query attends uniformly; 0 = every query attends one token)."""
    p = attn.float()
    h = -torch.special.xlogy(p, p).sum(dim=-1)
    return (h / math.log(p.shape[-1])).mean(dim=(1, 2))


def patch_norms(tokens: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Block output tokens [B, T, D] -> [B, P]: the L2 norm of each patch token (prefix tokens left out)."""
    return tokens[:, _check_prefix(num_prefix_tokens, tokens.shape[1]) :].float().norm(dim=-1)


def high_norm_fraction(tokens: torch.Tensor, num_prefix_tokens: int = 1, k: float = 5.0) -> torch.Tensor:
    """Block output tokens [B, T, D] -> [B]: fraction of patch tokens whose L2 norm exceeds
    median + k * MAD of the image's patch-token norms (MAD = median absolute deviation, unscaled)."""
    norms = patch_norms(tokens, num_prefix_tokens)
    med = norms.quantile(0.5, dim=-1, keepdim=True)
    mad = (norms - med).abs().quantile(0.5, dim=-1, keepdim=True)
    return (norms > med + k * mad).float().mean(dim=-1)


def norm_ratio(tokens: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Block output tokens [B, T, D] -> [B]: the largest patch-token norm over the median patch-token norm
    (1 = all equal; "Vision Transformers Need Registers": artifact tokens have about 10 x the norm of the rest)."""
    norms = patch_norms(tokens, num_prefix_tokens)
    med = norms.quantile(0.5, dim=-1)
    return norms.amax(dim=-1) / med.clamp_min(torch.finfo(norms.dtype).tiny)


def prefix_share(attn: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """A [B, H, T, T] -> [B]: the share of the patch queries' attention that goes to the prefix tokens (CLS and
    registers) rather than to patches: mean over heads and patch queries i of sum over prefix keys t of A[b, h, i, t].
    0 = the patches attend only to patches; 1 = only to the prefix."""
    n = _check_prefix(num_prefix_tokens, attn.shape[-1])
    return attn[:, :, n:, :n].float().sum(dim=-1).mean(dim=(1, 2))


def sink_positions(r_norm: torch.Tensor) -> torch.Tensor:
    """r' [B, P] -> [B] index of each image's most-attended patch (row-major)."""
    return r_norm.argmax(dim=-1)


def sink_position_consistency(positions: torch.Tensor, num_patches: int) -> tuple[float, int]:
    """Most-attended patch index per image [N] -> (share of images whose sink sits at the single most common
    position, that position). 1 = a purely positional sink; about 1/P = it moves with the content."""
    counts = torch.bincount(positions.flatten().long().cpu(), minlength=num_patches)
    mode = int(counts.argmax())
    return float(counts[mode]) / max(1, positions.numel()), mode


def flat_patch_weights(pixel_std: torch.Tensor, fraction: float = 0.25) -> torch.Tensor:
    """Pixel std [B, P] (semmae.masking.regions.patch_pixel_std, the one measure of a patch's flatness) -> weights
    [B, P] that pick each image's flattest round(fraction * P) patches (at least 1).

    Ties at the cut (e.g. many pure-background patches with std 0) share the remaining places equally, so the
    result does not depend on patch order: weights are 1 below the cut, n_left / n_tied at it, 0 above; each
    image's weights sum to exactly n_flat."""
    b, p = pixel_std.shape
    n_flat = min(p, max(1, round(fraction * p)))
    s = pixel_std.float()
    cut = s.sort(dim=-1).values[:, n_flat - 1 : n_flat]
    tol = 1e-5 * s.amax(dim=-1, keepdim=True) + 1e-8  # float noise in the std of a constant patch
    below = s < cut - tol
    tied = (s - cut).abs() <= tol
    n_left = n_flat - below.sum(dim=-1, keepdim=True)
    return below.float() + tied.float() * n_left / tied.sum(dim=-1, keepdim=True).clamp_min(1)


def flat_patch_share(r_norm: torch.Tensor, flat_weights: torch.Tensor) -> torch.Tensor:
    """r' [B, P] and flat-patch weights [B, P] -> [B]: share of the received attention that goes to the flattest
    patches (= fraction of the patches when attention is even)."""
    return (r_norm * flat_weights).sum(dim=-1) / r_norm.sum(dim=-1).clamp_min(torch.finfo(r_norm.dtype).tiny)


def shallow_blocks(depth: int, spec: int | list[int] | None = None) -> list[int]:
    """1-based indices of the blocks that count as shallow: spec None = the first third (round(depth / 3),
    at least 1: blocks 1-2 of 6, 1-4 of 12); an int n = the first n; a list = exactly those blocks."""
    if spec is None:
        return list(range(1, max(1, round(depth / 3)) + 1))
    if isinstance(spec, int):
        if not 1 <= spec <= depth:
            raise ConfigError(f"shallow_blocks={spec}: must be between 1 and the depth ({depth})")
        return list(range(1, spec + 1))
    blocks = sorted({int(i) for i in spec})
    if not blocks or blocks[0] < 1 or blocks[-1] > depth:
        raise ConfigError(f"shallow_blocks={list(spec)}: give 1-based block indices between 1 and {depth}")
    return blocks
