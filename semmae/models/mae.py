"""The masked autoencoder: ViT encoder on the visible patches, light decoder, pixel loss on the hidden patches.
Which patches are visible is decided outside, by a masking strategy (semmae.masking), and passed in as a Mask."""

from __future__ import annotations

import torch
from torch import nn

from semmae.masking.base import Mask
from semmae.models.decoder import MAEDecoder
from semmae.models.encoder import ViTEncoder


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C], patches row-major, pixels (row, col, channel) inside a patch (MAE's order)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of patchify."""
    b = patches.shape[0]
    (gh, gw), p = grid_size, patch_size
    x = patches.reshape(b, gh, gw, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, gh * p, gw * p)


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean squared error per patch, averaged over the hidden patches only (mask True = hidden)."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


class MaskedAutoencoder(nn.Module):
    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 1,
        embed_dim: int = 128,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        decoder_embed_dim: int = 64,
        decoder_depth: int = 2,
        decoder_num_heads: int = 4,
        norm_pix_loss: bool = True,
        fused_attn: bool = True,
        reg_tokens: int = 0,
        attn_gate: bool = False,
    ):
        super().__init__()
        self.config = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            decoder_embed_dim=decoder_embed_dim,
            decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads,
            norm_pix_loss=norm_pix_loss,
            reg_tokens=reg_tokens,
            attn_gate=attn_gate,
        )
        self.encoder = ViTEncoder(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            fused_attn=fused_attn,
            reg_tokens=reg_tokens,
            attn_gate=attn_gate,
        )
        self.decoder = MAEDecoder(
            grid_size=self.encoder.grid_size,
            patch_size=patch_size,
            in_chans=in_chans,
            encoder_dim=embed_dim,
            embed_dim=decoder_embed_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
            fused_attn=fused_attn,
        )
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE's initialisation: xavier-uniform linears (patch projection viewed as a linear), N(0, .02) tokens.
        Attention gates (attn_gate) are not linears here: they keep their open start (semmae.models.gated_attention)."""
        w = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        if self.encoder.reg_token is not None:  # registers start like CLS
            nn.init.normal_(self.encoder.reg_token, std=0.02)
        nn.init.normal_(self.decoder.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.encoder.grid_size

    @property
    def num_patches(self) -> int:
        return self.encoder.num_patches

    def forward(self, images: torch.Tensor, mask: Mask) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (loss on hidden patches, predicted patches [B, N, p*p*C]). Registers (reg_tokens) run through every
        encoder step with CLS and are dropped before the decoder: the loss and predictions are on patches only."""
        latent = self.encoder.forward_visible(images, mask.ids_keep)
        pred = self.decoder(latent, mask.ids_restore, self.encoder.num_prefix_tokens)
        loss = masked_patch_loss(pred, patchify(images, self.patch_size), mask.mask, self.norm_pix_loss)
        return loss, pred

    def reconstruct(self, images: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Predicted patches -> image space; with norm_pix_loss, de-normalised with each true patch's statistics."""
        if self.norm_pix_loss:
            target = patchify(images, self.patch_size)
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
            pred = pred * std + mean
        return unpatchify(pred, self.patch_size, self.grid_size, self.in_chans)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {
            f"decoder.{n}" for n in self.decoder.no_weight_decay()
        }
