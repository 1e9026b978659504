"""The ViT encoder: timm's VisionTransformer with fixed sin-cos position embeddings that can also run on a
subset of patch tokens (MAE's visible tokens). Its state dict is timm's, so exported weights load into timm."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from semmae.errors import ConfigError
from semmae.models.pos_embed import sincos_2d


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], ids [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class ViTEncoder(VisionTransformer):
    """timm ViT (CLS token, pre-norm blocks, final norm) with frozen 2-D sin-cos position embeddings."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 1,
        embed_dim: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        num_classes: int = 0,
        global_pool: str = "token",
        fc_norm: bool | None = None,
        fused_attn: bool = True,
        **kwargs,
    ):
        validate_geometry(img_size, patch_size, embed_dim, num_heads)
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            num_classes=num_classes,
            global_pool=global_pool,
            fc_norm=fc_norm,
            class_token=True,
            pos_embed="learn",
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            **kwargs,
        )
        self.config = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
        )
        self.pos_embed.requires_grad_(False)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(embed_dim, self.patch_embed.grid_size, cls_token=True).unsqueeze(0))
        for blk in self.blocks:
            blk.attn.fused_attn = fused_attn

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def forward_visible(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] and kept patch ids [B, K] -> normed tokens [B, 1 + K, D] (CLS first)."""
        tokens = self.patch_embed(x) + self.pos_embed[:, 1:]
        tokens = gather_tokens(tokens, ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        tokens = self.norm_pre(torch.cat([cls, tokens], dim=1))
        return self.norm(self.blocks(tokens))

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """CLS feature of the full image after the final norm: the linear-probe feature."""
        return self.forward_features(x)[:, 0]

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token", "reg_token"}


def validate_geometry(img_size: int, patch_size: int, embed_dim: int, num_heads: int) -> None:
    for key, value in (("backbone.img_size", img_size), ("backbone.patch_size", patch_size),
                       ("backbone.embed_dim", embed_dim), ("backbone.num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r}: must be a whole number >= 1")
    if patch_size > img_size:
        raise ConfigError(f"backbone.patch_size={patch_size} is larger than the image (backbone.img_size={img_size})")
    if img_size % patch_size:
        raise ConfigError(
            f"image size {img_size} is not divisible by patch size {patch_size}: "
            f"set backbone.img_size to a multiple of {patch_size} (e.g. {img_size - img_size % patch_size + patch_size})"
        )
    if embed_dim % num_heads:
        raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
