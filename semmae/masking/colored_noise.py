"""Coloured-noise masking (after ColorMAE): data-independent scores made of white noise filtered on the patch grid,
so the visible patches form patterns of a chosen spatial frequency instead of independent dots.

White noise [B, h, w] from the step's generator is filtered in Fourier space (rfft2 -> radial filter -> irfft2);
radial frequency f is in cycles per patch (0 .. 0.71). Colours:
- `red` (low-pass): exp(-f^2 / 2 frequency^2): large blobs;
- `blue` (high-pass): 1 - red: fine, evenly spread dots;
- `green` (band-pass, ColorMAE's best): exp(-(f - frequency)^2 / 2 bandwidth^2): blobs of a characteristic size;
- `purple` (band-stop): 1 - green.
The filter is stationary, so every position is equally likely to be visible. Batched, a handful of kernels."""

from __future__ import annotations

import torch

from semmae.errors import ConfigError
from semmae.masking.base import MaskingStrategy

COLORS = ("red", "blue", "green", "purple")


def radial_frequency(grid_size: tuple[int, int], device) -> torch.Tensor:
    """|f| in cycles per patch on rfft2's half-spectrum grid [h, w // 2 + 1]."""
    h, w = grid_size
    fy = torch.fft.fftfreq(h, device=device).view(h, 1)
    fx = torch.fft.rfftfreq(w, device=device).view(1, w // 2 + 1)
    return torch.sqrt(fy * fy + fx * fx)


def noise_filter(grid_size: tuple[int, int], color: str, frequency: float, bandwidth: float, device) -> torch.Tensor:
    f = radial_frequency(grid_size, device)
    low = torch.exp(-0.5 * (f / frequency) ** 2)
    band = torch.exp(-0.5 * ((f - frequency) / bandwidth) ** 2)
    return {"red": low, "blue": 1.0 - low, "green": band, "purple": 1.0 - band}[color]


class ColoredNoiseMasking(MaskingStrategy):
    name = "colored_noise"

    def __init__(
        self,
        mask_ratio: float = 0.75,
        color: str = "green",
        frequency: float = 0.2,
        bandwidth: float = 0.08,
        visible_count: str = "official",
    ):
        super().__init__(mask_ratio, visible_count)
        if color not in COLORS:
            raise ConfigError(f"masking.color must be one of {', '.join(COLORS)}, got {color!r}")
        if not 0.0 < float(frequency) <= 0.75:
            raise ConfigError(f"masking.frequency (cycles per patch) must be in (0, 0.75], got {frequency}")
        if float(bandwidth) <= 0.0:
            raise ConfigError(f"masking.bandwidth must be > 0, got {bandwidth}")
        self.color, self.frequency, self.bandwidth = color, float(frequency), float(bandwidth)
        self._filters: dict[tuple, torch.Tensor] = {}

    def params(self):
        return {**super().params(), "color": self.color, "frequency": self.frequency, "bandwidth": self.bandwidth}

    def _filter(self, grid_size, device) -> torch.Tensor:
        key = (tuple(grid_size), str(device))
        if key not in self._filters:
            self._filters[key] = noise_filter(grid_size, self.color, self.frequency, self.bandwidth, device)
        return self._filters[key]

    def scores(self, images, grid_size, generator, batch=None) -> torch.Tensor:
        h, w = grid_size
        b, dev = images.shape[0], images.device
        white = torch.randn(b, h, w, device=dev, generator=generator)
        colored = torch.fft.irfft2(torch.fft.rfft2(white) * self._filter(grid_size, dev), s=(h, w))
        return colored.reshape(b, h * w)
