"""MAE's light decoder: embeds the visible tokens, fills the hidden positions with a learned mask token,
adds fixed sin-cos positions, runs a few timm Blocks and predicts the pixels of every patch."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from semmae.models.pos_embed import sincos_2d


class MAEDecoder(nn.Module):
    def __init__(
        self,
        grid_size: tuple[int, int],
        patch_size: int,
        in_chans: int,
        encoder_dim: int,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        fused_attn: bool = True,
    ):
        super().__init__()
        self.grid_size = tuple(grid_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            sincos_2d(embed_dim, self.grid_size, cls_token=True).unsqueeze(0), requires_grad=False
        )
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)]
        )
        for blk in self.blocks:
            blk.attn.fused_attn = fused_attn
        self.norm = norm(embed_dim)
        self.pred = nn.Linear(embed_dim, patch_size * patch_size * in_chans)
        self.num_patches = num_patches

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
        """Encoder tokens [B, P + K, D_enc] (CLS first, then P - 1 registers), ids_restore [B, N] -> pixel
        predictions [B, N, p*p*C]. The registers are dropped here: the decoder's own sequence is [CLS, N patches], as
        without them."""
        if num_prefix_tokens > 1:
            tokens = torch.cat([tokens[:, :1], tokens[:, num_prefix_tokens:]], dim=1)
        x = self.embed(tokens)
        b, k1, d = x.shape
        mask_tokens = self.mask_token.expand(b, self.num_patches + 1 - k1, d)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.pred(x[:, 1:])

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "mask_token"}
