"""Seeded images without content, generated on the fly, for the semantic-invariance score (docs/artifacts.md#
semantic-invariance), after the synthetic set of Hjelkrem-Tan et al. (SOAP, CVPR 2026; dsb-ifi/soap, soap/synth):
pink noise (1/f amplitude spectrum), white noise modulated by a pink-noise envelope, random linear gradients and
constants, in equal shares (image i is kind i mod 4), made in [0, 1] pixel space and then normalised with the
dataset's mean and std, as the model's input is."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

KINDS = ("pink_noise", "modulated_white_noise", "gradient", "constant")


def pink_noise(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[n, C, size, size] in [0, 1]: white noise filtered to a 1/f amplitude spectrum, standardised per image and
    mapped to 0.5 + z / 6 (clipped)."""
    white = torch.randn(n, channels, size, size, generator=generator)
    fy = torch.fft.fftfreq(size).abs()[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    f = (fx**2 + fy**2).sqrt()
    f[0, 0] = float("inf")  # no DC: every image is centred, then shifted to mid-grey
    img = torch.fft.irfft2(torch.fft.rfft2(white) / f, s=(size, size))
    z = (img - img.mean(dim=(-2, -1), keepdim=True)) / img.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (0.5 + z / 6).clamp(0, 1)


def modulated_white_noise(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[n, C, size, size] in [0, 1]: Gaussian white noise (std 0.25) whose amplitude follows a pink-noise envelope
    shared by the channels, around mid-grey."""
    envelope = pink_noise(n, 1, size, generator)
    white = torch.randn(n, channels, size, size, generator=generator) * 0.25
    return (0.5 + envelope * white).clamp(0, 1)


def gradient(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[n, C, size, size] in [0, 1]: a * x + b * y + c per channel, x and y in [0, 1], a, b, c ~ U(0, 1), clipped."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    coords = torch.stack([x, y, torch.ones_like(x)])
    coeffs = torch.rand(n, channels, 3, generator=generator)
    return torch.einsum("bck,kyx->bcyx", coeffs, coords).clamp(0, 1)


def constant(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[n, C, size, size]: one value ~ U(0, 1) per image and channel."""
    return torch.rand(n, channels, 1, 1, generator=generator).expand(n, channels, size, size).clone()


MAKERS = {
    "pink_noise": pink_noise,
    "modulated_white_noise": modulated_white_noise,
    "gradient": gradient,
    "constant": constant,
}


def synthetic_batches(
    num_images: int,
    channels: int,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    batch_size: int = 250,
) -> Iterator[torch.Tensor]:
    """num_images content-free images [b, C, size, size] in batches, normalised with mean / std (one value per
    channel, or one for all); the same seed gives the same images."""
    if num_images < 1 or batch_size < 1:
        raise ValueError(f"num_images={num_images}, batch_size={batch_size}: both must be >= 1")
    g = torch.Generator().manual_seed(int(seed))
    m = torch.as_tensor(list(mean), dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.as_tensor(list(std), dtype=torch.float32).reshape(1, -1, 1, 1)
    for start in range(0, num_images, batch_size):
        idx = torch.arange(start, min(num_images, start + batch_size))
        out = torch.empty(len(idx), channels, size, size)
        for k, name in enumerate(KINDS):
            sel = (idx % len(KINDS) == k).nonzero().flatten()
            if len(sel):
                out[sel] = MAKERS[name](len(sel), channels, size, g)
        yield (out - m) / s
