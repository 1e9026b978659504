"""The online linear probe of a pretraining run (solo-learn's idea): BatchNorm1d(affine=False) + Linear on the
detached CLS feature of the full, unmasked image, trained alongside the MAE with its own optimiser."""

from __future__ import annotations

import torch
from torch import nn


class OnlineProbe(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(embed_dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features.detach().float()))
