"""The ViT encoder: timm's VisionTransformer with fixed sin-cos position embeddings that can also run on a
subset of patch tokens (MAE's visible tokens). Its state dict is timm's, so exported weights load into timm (with
attn_gate=True the blocks carry a head-wise attention gate, semmae.models.gated_attention, which timm's ViT has not)."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from semmae.errors import ConfigError
from semmae.models.gated_attention import GatedAttention
from semmae.models.pos_embed import sincos_2d


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], ids [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class ViTEncoder(VisionTransformer):
    """timm ViT (CLS token, optional register tokens, pre-norm blocks, final norm) with frozen 2-D sin-cos position
    embeddings. reg_tokens=N adds N registers (timm's reg_token, after CLS: [CLS, registers, patches]); they carry
    no task signal and are dropped wherever patch tokens are read (num_prefix_tokens = 1 + N). attn_gate=True gives
    every block a head-wise sigmoid gate on its attention output (GatedAttention). norm_eps is every LayerNorm's
    epsilon (1e-6 as MAE and timm; Hugging Face ViTs use 1e-12). Foreign ViTs also bring LayerScale (init_values, as
    timm) and position entries for the patches only (no_embed_class, as DINOv2 with registers: the prefix tokens then
    carry no position)."""

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
        reg_tokens: int = 0,
        attn_gate: bool = False,
        norm_eps: float = 1e-6,
        init_values: float | None = None,
        no_embed_class: bool = False,
        **kwargs,
    ):
        validate_geometry(img_size, patch_size, embed_dim, num_heads)
        validate_reg_tokens(reg_tokens)
        validate_switch("backbone.attn_gate", attn_gate)
        validate_switch("no_embed_class", no_embed_class)
        validate_norm_eps(norm_eps)
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
            reg_tokens=reg_tokens,
            no_embed_class=no_embed_class,
            init_values=init_values,
            pos_embed="learn",
            norm_layer=partial(nn.LayerNorm, eps=norm_eps),
            attn_layer=GatedAttention if attn_gate else Attention,
            **kwargs,
        )
        self.config = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            reg_tokens=reg_tokens,
            attn_gate=bool(attn_gate),
            norm_eps=float(norm_eps),
            init_values=init_values,
            no_embed_class=bool(no_embed_class),
        )
        # timm's layout: one position entry per prefix token (CLS, then the registers), then the patch grid; the
        # prefix entries are zero and, like the grid's, frozen. no_embed_class: the grid alone.
        self.pos_embed.requires_grad_(False)
        with torch.no_grad():
            self.pos_embed.copy_(prefixed_sincos(embed_dim, self.patch_embed.grid_size, self.num_pos_prefix))
        for blk in self.blocks:
            blk.attn.fused_attn = fused_attn

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    @property
    def num_pos_prefix(self) -> int:
        """Position entries before the patch grid: one per prefix token, or none (no_embed_class)."""
        return 0 if self.no_embed_class else self.num_prefix_tokens

    def forward_visible(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] and kept patch ids [B, K] -> normed tokens [B, P + K, D]: the P = num_prefix_tokens
        prefix tokens first (CLS, then the registers, which every step sees), then the kept patches."""
        npt = self.num_pos_prefix
        tokens = self.patch_embed(x) + self.pos_embed[:, npt:]
        tokens = gather_tokens(tokens, ids_keep)
        prefix = self.cls_token + self.pos_embed[:, :1] if npt else self.cls_token
        if self.reg_token is not None:
            prefix = torch.cat([prefix, self.reg_token + self.pos_embed[:, 1:npt] if npt else self.reg_token], dim=1)
        prefix = prefix.expand(tokens.shape[0], -1, -1)
        tokens = self.norm_pre(torch.cat([prefix, tokens], dim=1))
        return self.norm(self.blocks(tokens))

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token", "reg_token"}


def prefixed_sincos(embed_dim: int, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """[1, P + h*w, D] position embedding: zero rows for the P prefix tokens (CLS, registers), then the sin-cos grid."""
    grid = sincos_2d(embed_dim, grid_size)
    return torch.cat([grid.new_zeros(num_prefix_tokens, embed_dim), grid], dim=0).unsqueeze(0)


def validate_reg_tokens(reg_tokens: int) -> None:
    if isinstance(reg_tokens, bool) or not isinstance(reg_tokens, int) or reg_tokens < 0:
        raise ConfigError(f"backbone.reg_tokens={reg_tokens!r}: must be a whole number >= 0 (0: no registers)")


def validate_switch(key: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: must be true or false")


def validate_norm_eps(norm_eps: float) -> None:
    if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or not 0 < norm_eps < 1:
        raise ConfigError(f"norm_eps={norm_eps!r}: the LayerNorm epsilon must be a number in (0, 1)")


def validate_geometry(img_size: int, patch_size: int, embed_dim: int, num_heads: int) -> None:
    for key, value in (
        ("backbone.img_size", img_size),
        ("backbone.patch_size", patch_size),
        ("backbone.embed_dim", embed_dim),
        ("backbone.num_heads", num_heads),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r}: must be a whole number >= 1")
    if patch_size > img_size:
        raise ConfigError(f"backbone.patch_size={patch_size} is larger than the image (backbone.img_size={img_size})")
    if img_size % patch_size:
        raise ConfigError(
            f"image size {img_size} is not divisible by patch size {patch_size}: "
            f"set backbone.img_size to a multiple of {patch_size} "
            f"(e.g. {img_size - img_size % patch_size + patch_size})"
        )
    if embed_dim % num_heads:
        raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
