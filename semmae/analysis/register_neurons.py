"""High-norm outlier tokens at a detection block and the MLP neurons that make them (docs/artifacts.md#outliers),
after Darcet et al., "Vision Transformers Need Registers" (ICLR 2024) and Jiang, Dravid et al., "Vision
Transformers Don't Need Trained Registers" (NeurIPS 2025) with their public code (nickjiang2378/test-time-registers,
shared/algorithms.py): outliers are patch tokens whose norm at the detection block is far above the image's
median; a (block, neuron) pair's score is its mean |activation| at the outlier positions, averaged over the images
that have outliers, and the pairs are ranked by it.

The search needs a second forward pass per batch (the outlier positions are known only at the detection block,
after the neurons have fired); the MLP activations are reduced as they are produced, never kept."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from semmae.errors import ConfigError


@dataclass(frozen=True)
class OutlierSettings:
    """block: the detection block (1-based; None = the last); ratio: an outlier's norm exceeds ratio x the median
    patch-token norm of its image; norm: an absolute threshold instead (the papers' form, model-specific), None =
    use ratio; top_k: ranked (block, neuron) pairs reported (and used by test-time registers)."""

    block: int | None = None
    ratio: float = 10.0
    norm: float | None = None
    top_k: int = 10

    def __post_init__(self):
        if not self.ratio > 1:
            raise ConfigError(f"analysis.outliers.ratio={self.ratio}: must be > 1 (default 10: ~10x the median)")
        if self.norm is not None and not self.norm > 0:
            raise ConfigError(f"analysis.outliers.norm={self.norm}: must be > 0, or null to use the ratio")
        if self.top_k < 1:
            raise ConfigError(f"analysis.outliers.top_k={self.top_k}: must be >= 1")

    def detection_block(self, depth: int) -> int:
        """0-based index of the detection block."""
        block = depth if self.block is None else int(self.block)
        if not 1 <= block <= depth:
            raise ConfigError(f"analysis.outliers.block={self.block}: must be between 1 and the depth ({depth})")
        return block - 1


def outlier_mask(
    tokens: torch.Tensor, num_prefix_tokens: int, ratio: float = 10.0, norm: float | None = None
) -> torch.Tensor:
    """Block output tokens [B, T, D] -> [B, T] True at the outliers: patch tokens (prefix excluded) whose L2 norm
    exceeds `norm` when given, else ratio x the median patch-token norm of their image."""
    norms = tokens.float().norm(dim=-1)
    patch = norms[:, num_prefix_tokens:]
    if norm is not None:
        limit = torch.full_like(patch[:, :1], float(norm))
    else:
        limit = ratio * patch.quantile(0.5, dim=-1, keepdim=True)
    mask = torch.zeros_like(norms, dtype=torch.bool)
    mask[:, num_prefix_tokens:] = patch > limit
    return mask


class OutlierAccumulator:
    """Counts of outliers at the detection block over batches: share of patch tokens, share of images with any,
    their norm relative to the median, and where they sit on the patch grid."""

    def __init__(self, settings: OutlierSettings, num_patches: int):
        self.settings = settings
        self.num_patches = num_patches
        self.n_images = self.n_with = self.n_outliers = 0
        self.ratio_sum = 0.0
        self.positions = torch.zeros(num_patches, dtype=torch.long)

    def update(self, tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
        """Detection-block tokens [B, T, D] -> the outlier mask [B, T] (also counted)."""
        s = self.settings
        mask = outlier_mask(tokens, num_prefix_tokens, s.ratio, s.norm)
        patch = mask[:, num_prefix_tokens:]
        norms = tokens.float().norm(dim=-1)[:, num_prefix_tokens:]
        rel = norms / norms.quantile(0.5, dim=-1, keepdim=True).clamp_min(1e-12)
        self.n_images += tokens.shape[0]
        self.n_with += int(patch.any(dim=-1).sum())
        self.n_outliers += int(patch.sum())
        self.ratio_sum += float(rel[patch].sum())
        if patch.shape[1] == self.num_patches:
            self.positions += patch.sum(dim=0).cpu()
        return mask

    def result(self) -> dict:
        top = [int(i) for i in self.positions.argsort(descending=True)[:3] if self.positions[i] > 0]
        return {
            "outlier_fraction": self.n_outliers / max(1, self.n_images * self.num_patches),
            "images_with_outliers": self.n_with / max(1, self.n_images),
            "outlier_norm_ratio": self.ratio_sum / self.n_outliers if self.n_outliers else None,
            "outlier_positions": top,  # most frequent outlier patches (row-major index), most frequent first
        }


class NeuronScores:
    """Per (block, neuron): the mean over images with outliers of the mean |activation| at that image's outliers
    (the score), and the mean |activation| over the other patch tokens of the same images (for contrast)."""

    def __init__(self, depth: int, hidden: int, device: torch.device | str = "cpu"):
        self.at = torch.zeros(depth, hidden, dtype=torch.float64, device=device)
        self.elsewhere = torch.zeros(depth, hidden, dtype=torch.float64, device=device)
        self.n_images = 0
        self._mask: torch.Tensor | None = None

    def hook(self, block: int, act: torch.Tensor) -> None:
        """An MLP hidden activation [B, T, hidden] of block (0-based), while self._mask [B, T] is set."""
        mask = self._mask
        with_any = mask.any(dim=1)
        if not bool(with_any.any()):
            return
        a = act.abs().double()[with_any]
        m = mask[with_any].double()
        other = (~mask[with_any]).double()
        other[:, : self._prefix] = 0
        self.at[block] += ((a * m[..., None]).sum(1) / m.sum(1, keepdim=True)).sum(0)
        self.elsewhere[block] += ((a * other[..., None]).sum(1) / other.sum(1, keepdim=True).clamp_min(1)).sum(0)

    def update(self, encoder: nn.Module, images: torch.Tensor, mask: torch.Tensor) -> None:
        """Run the encoder on the images whose outlier mask [B, T] is known, reducing every block's MLP activations
        at the outlier positions."""
        keep = mask.any(dim=1)
        if not bool(keep.any()):
            return
        self._mask, self._prefix = mask[keep], int(getattr(encoder, "num_prefix_tokens", 1))
        try:
            mlp_forward(encoder, images[keep], self.hook)
        finally:
            self._mask = None
        self.n_images += int(keep.sum())

    def ranked(self, max_block: int, top_k: int) -> list[dict]:
        """The top_k (block, neuron) pairs of blocks 1..max_block (1-based) by score, highest first."""
        if self.n_images == 0:
            return []
        score = (self.at[:max_block] / self.n_images).flatten()
        other = (self.elsewhere[:max_block] / self.n_images).flatten()
        hidden = self.at.shape[1]
        order = score.argsort(descending=True)[:top_k]
        return [
            {
                "block": int(i) // hidden + 1,
                "neuron": int(i) % hidden,
                "score": float(score[i]),
                "elsewhere": float(other[i]),
            }
            for i in order
        ]


def mlp_forward(encoder: nn.Module, images: torch.Tensor, hook) -> None:
    """encoder.forward_features(images) in eval mode without gradients, calling hook(block, hidden activations)
    with every block's MLP activations (the output of mlp.act); the fused attention path is kept. Modes and hooks
    are restored afterwards."""
    blocks = list(encoder.blocks)
    if any(not isinstance(getattr(getattr(b, "mlp", None), "act", None), nn.Module) for b in blocks):
        raise ConfigError("the register-neuron search needs timm MLP blocks (mlp.act): this encoder has none")
    training = [(m, m.training) for m in encoder.modules()]
    handles = [
        blk.mlp.act.register_forward_hook(lambda _m, _i, out, i=i: hook(i, out.detach()))
        for i, blk in enumerate(blocks)
    ]
    try:
        encoder.eval()
        with torch.no_grad():
            encoder.forward_features(images)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training:
            m.training = flag


def mlp_width(encoder: nn.Module) -> int:
    fc1 = getattr(encoder.blocks[0].mlp, "fc1", None)
    if not isinstance(fc1, nn.Linear):
        raise ConfigError("the register-neuron search needs timm MLP blocks (mlp.fc1, mlp.act)")
    return int(fc1.out_features)
