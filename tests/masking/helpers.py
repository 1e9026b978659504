"""Shared helpers for the masking tests: reference connected components (scipy), smooth and painted images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def reference_roots(labels: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """[B, N] labels -> smallest patch index of each patch's 4-connected same-label component, via scipy."""
    h, w = grid_size
    out = []
    for lab in labels.reshape(-1, h, w).cpu().numpy():
        roots = np.empty(h * w, dtype=np.int64)
        for value in np.unique(lab):
            comp, k = ndimage.label(lab == value)
            flat = comp.reshape(-1)
            for c in range(1, k + 1):
                ids = np.flatnonzero(flat == c)
                roots[ids] = ids.min()
        out.append(roots)
    return torch.from_numpy(np.stack(out))


def spiral(h: int, w: int) -> np.ndarray:
    """A one-patch-wide spiral corridor (label 1) with walls (label 0): the longest paths a grid allows."""
    grid = np.zeros((h, w), dtype=np.int64)
    grid[0, 0] = 1
    r = c = d = 0
    dirs = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    while True:
        for _ in range(4):
            dr, dc = dirs[d]
            r2, c2 = r + 2 * dr, c + 2 * dc
            if 0 <= r2 < h and 0 <= c2 < w and grid[r2, c2] == 0 and grid[r + dr, c + dc] == 0:
                grid[r + dr, c + dc] = grid[r2, c2] = 1
                r, c = r2, c2
                break
            d = (d + 1) % 4
        else:
            return grid


def snake(h: int, w: int) -> np.ndarray:
    """Boustrophedon corridor: full rows joined alternately at the right and left ends."""
    grid = np.zeros((h, w), dtype=np.int64)
    grid[0::2, :] = 1
    grid[1::4, w - 1] = 1
    grid[3::4, 0] = 1
    return grid


def smooth_images(b: int, channels: int, size: int, generator: torch.Generator, cells: int = 4) -> torch.Tensor:
    """Smooth random images: a cells x cells random field upsampled bicubically to size x size."""
    low = torch.randn(b, channels, cells, cells, generator=generator)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)


def painted_images(b: int, grid: int, patch: int, colours: int, generator: torch.Generator):
    """Images of `colours` flat grey levels painted on patch-aligned Voronoi cells of random seeds.
    -> (images [B, 1, grid*patch, grid*patch], colour index per patch [B, grid*grid])."""
    seeds = torch.rand(b, colours, 2, generator=generator) * grid
    rows, cols = torch.meshgrid(torch.arange(grid) + 0.5, torch.arange(grid) + 0.5, indexing="ij")
    pos = torch.stack([rows, cols], -1).reshape(1, grid * grid, 1, 2)
    owner = (pos - seeds[:, None]).pow(2).sum(-1).argmin(-1)  # [B, N]
    levels = torch.linspace(-1.5, 1.5, colours)[torch.argsort(torch.rand(b, colours, generator=generator), 1)]
    patch_values = levels.gather(1, owner)  # [B, N]
    img = patch_values.reshape(b, 1, grid, grid).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return img, owner
