"""Classification heads on encoder features. The linear-probe head is MAE's: BatchNorm1d without affine parameters
(eps 1e-6) then a linear layer, so the probe is a linear function of standardised features. pool_tokens picks the
feature a probe reads from the encoder's output tokens."""

from __future__ import annotations

import torch
from torch import nn

from semmae.errors import ConfigError

POOLS = ("token", "avg")


def pool_tokens(tokens: torch.Tensor, pool: str, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Final-normed tokens [B, T, D] (prefix tokens first) -> [B, D]: "token" = the CLS token, "avg" = the mean of
    the patch tokens."""
    if pool == "token":
        return tokens[:, 0]
    if pool == "avg":
        return tokens[:, num_prefix_tokens:].mean(dim=1)
    raise ConfigError(f"pool must be one of {POOLS}, got {pool!r}")


class ProbeHead(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int, init_std: float = 0.01):
        super().__init__()
        self.norm = nn.BatchNorm1d(embed_dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=init_std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))
