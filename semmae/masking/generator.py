"""Per-step random generators on the training device, seeded from (seed, rank, epoch, batch): reproducible runs,
different masks on every DDP rank, and the same masks again after a resume."""

from __future__ import annotations

import torch

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit hash of integers (splitmix64-style), independent of Python's hash randomisation."""
    h = 0
    for i, p in enumerate(parts):
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * _MIX[i % 3] & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class StepGenerator:
    """Holds one torch.Generator per device and re-seeds it for each step."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._gens: dict[str, torch.Generator] = {}

    def __call__(self, device: torch.device, *parts: int) -> torch.Generator:
        key = str(device)
        if key not in self._gens:
            self._gens[key] = torch.Generator(device=device)
        return self._gens[key].manual_seed(mix_seed(self.seed, *parts))
