"""Where CLS attends and what attends to it, per block (docs/artifacts.md#cls-statistics), after Przewięźlikowski et
al., "Beyond [cls]" (ICCV 2025) and their public code (gmum/beyond_cls, main_attention_stats.py): CLS->CLS,
CLS->patches, patches->CLS, the patches' attention to themselves, the entropy of the CLS row and of the patch rows
over the patch keys, and the size of the attention branch against the residual stream it is added to.

Pure functions: one value per image (mean over heads and, where it says, over patch queries)."""

from __future__ import annotations

import math

import torch

from semmae.analysis.capture import Capture
from semmae.errors import ConfigError

STATS = (
    "cls_cls",
    "cls_patches",
    "patches_cls",
    "patch_self",
    "cls_entropy",
    "patch_entropy",
    "branch_ratio_cls",
    "branch_ratio_patches",
)
SHARES = {"cls_cls", "cls_patches", "patches_cls", "patch_self"}  # attention shares (the rest: entropies, ratios)


def _rows_entropy(rows: torch.Tensor) -> torch.Tensor:
    """Rows [..., P] of non-negative weights -> entropy of each row renormalised to sum 1, over log P (in [0, 1])."""
    p = rows / rows.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
    return -torch.special.xlogy(p, p).sum(dim=-1) / math.log(max(2, rows.shape[-1]))


def attention_stats(attn: torch.Tensor, num_prefix_tokens: int = 1) -> dict[str, torch.Tensor]:
    """A [B, H, T, T] -> per image [B], each a mean over heads:

    - cls_cls: A[0, 0], the CLS query's attention to itself;
    - cls_patches: sum over patch keys j of A[0, j];
    - patches_cls: mean over patch queries i of A[i, 0];
    - patch_self: mean over patch queries i of A[i, i];
    - cls_entropy: the entropy of the CLS row over the patch keys (renormalised to sum 1), over log P;
    - patch_entropy: the same for each patch query, averaged over the patch queries.
    Prefix tokens other than CLS (registers) are neither CLS nor patches here."""
    n = int(num_prefix_tokens)
    if not 1 <= n < attn.shape[-1]:
        raise ConfigError(f"num_prefix_tokens={num_prefix_tokens}: the CLS statistics need a CLS token and patches")
    a = attn.float()
    patches = a[:, :, n:, n:]
    return {
        "cls_cls": a[:, :, 0, 0].mean(dim=1),
        "cls_patches": a[:, :, 0, n:].sum(dim=-1).mean(dim=1),
        "patches_cls": a[:, :, n:, 0].mean(dim=(1, 2)),
        "patch_self": patches.diagonal(dim1=-2, dim2=-1).mean(dim=(1, 2)),
        "cls_entropy": _rows_entropy(a[:, :, 0, n:]).mean(dim=1),
        "patch_entropy": _rows_entropy(patches).mean(dim=(1, 2)),
    }


def branch_ratios(branch: torch.Tensor, residual: torch.Tensor, num_prefix_tokens: int = 1) -> dict[str, torch.Tensor]:
    """The attention branch [B, T, D] as added to the residual stream, and that stream [B, T, D] (the block's
    input) -> per image [B]: ||branch|| / ||residual|| of the CLS token, and its mean over the patch tokens."""
    ratio = branch.float().norm(dim=-1) / residual.float().norm(dim=-1).clamp_min(1e-12)
    return {"branch_ratio_cls": ratio[:, 0], "branch_ratio_patches": ratio[:, int(num_prefix_tokens) :].mean(dim=-1)}


def cls_stats(cap: Capture, block: int) -> dict[str, torch.Tensor]:
    """Every statistic of STATS for one block (0-based) of a capture made with residual=True."""
    if cap.branch is None or cap.residual is None:
        raise ConfigError("the CLS statistics need capture(..., residual=True)")
    return {
        **attention_stats(cap.attn[block], cap.num_prefix_tokens),
        **branch_ratios(cap.branch[block], cap.residual[block], cap.num_prefix_tokens),
    }


def fair_share(name: str, num_tokens: int, num_patches: int) -> float:
    """What a statistic is under uniform attention over T tokens (P of them patches): 1/T for CLS->CLS,
    patches->CLS and patch self-attention, P/T for CLS->patches; 1 for the others (not shares)."""
    if name == "cls_patches":
        return num_patches / num_tokens
    return 1.0 / num_tokens if name in SHARES else 1.0


class ClsAccumulator:
    """Per-image CLS statistics of every block over a stream of captures (made with residual=True); the result is
    the mean over images, per block."""

    def __init__(self):
        self.per_block: list[dict[str, list[torch.Tensor]]] | None = None

    def update(self, cap: Capture) -> None:
        if self.per_block is None:
            self.per_block = [{name: [] for name in STATS} for _ in range(cap.depth)]
        for i, slot in enumerate(self.per_block):
            for name, value in cls_stats(cap, i).items():
                slot[name].append(value.cpu())

    def result(self) -> list[dict[str, float]]:
        if self.per_block is None:
            raise ConfigError("no images were analysed for the CLS statistics")
        return [{name: float(torch.cat(slot[name]).mean()) for name in STATS} for slot in self.per_block]
