"""Saving a matplotlib figure as a PNG in the run directory and sending it to whichever logger is attached."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from semmae.utils.atomic import atomic_write


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write fig to path atomically (semmae.utils.atomic) in the format its suffix names, and close it."""
    path = Path(path)
    try:
        atomic_write(
            path, lambda fh: fig.savefig(fh, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
        )
    finally:
        plt.close(fig)
    return path


def log_image(trainer, key: str, path: str | Path, step: int | None = None) -> None:
    """Send a saved PNG to every logger that takes images (W&B); file-only loggers keep the file on disk."""
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[str(path)], step=step)


def denormalize(images, mean, std):
    """Normalised [B, C, H, W] -> [0, 1] for display (grayscale if C == 1)."""
    import torch

    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    if mean_t.shape[1] != images.shape[1]:
        mean_t, std_t = mean_t[:, :1], std_t[:, :1]
    return (images * std_t + mean_t).clamp(0, 1)


def to_hwc(image):
    """[C, H, W] tensor in [0, 1] -> numpy [H, W] or [H, W, 3] for imshow."""
    arr = image.detach().float().cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
