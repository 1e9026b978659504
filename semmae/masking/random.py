"""MAE's random masking: uniform noise scores, so every subset of n_keep patches is equally likely."""

from __future__ import annotations

import torch

from semmae.masking.base import MaskingStrategy


class RandomMasking(MaskingStrategy):
    name = "random"

    def scores(self, images, grid_size, generator, batch=None) -> torch.Tensor:
        n = grid_size[0] * grid_size[1]
        return torch.rand(images.shape[0], n, device=images.device, generator=generator)
