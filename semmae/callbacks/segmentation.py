"""At the end of each validation epoch: image / ground truth / prediction for a few fixed validation images, saved
as figures/segmentation_epochNNN.png in the run directory and sent to the logger."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from semmae.models.upernet import resize
from semmae.utils.plotting import denormalize, log_image, plt, save_figure, to_hwc


def palette(num_classes: int) -> np.ndarray:
    """RGB colours [K, 3] in [0, 1]: tab20 for up to 20 classes, else fixed pseudo-random colours."""
    if num_classes <= 20:
        return np.asarray(plt.get_cmap("tab20").colors)[:num_classes]
    return np.random.default_rng(0).uniform(0.1, 1.0, (num_classes, 3))


def colorize(labels: torch.Tensor, colors: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """int label map [H, W] -> RGB [H, W, 3]; ignored pixels white."""
    lab = labels.detach().cpu().numpy()
    out = np.ones((*lab.shape, 3))
    known = (lab >= 0) & (lab < len(colors))
    out[known] = colors[lab[known]]
    return out


class SegmentationFigure(L.Callback):
    def __init__(self, num_images: int = 6):
        self.num_images = int(num_images)
        self.samples: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if len(self.samples) >= self.num_images or trainer.sanity_checking:
            return
        for image, mask in zip(batch["image"], batch["mask"]):  # images may differ in size (ADE20K): keep a list
            if len(self.samples) < self.num_images:
                self.samples.append((image.detach(), mask.detach()))

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not self.samples:
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            preds = [
                resize(pl_module.predict_logits(img[None]), mask.shape[-2:]).argmax(1)[0] for img, mask in self.samples
            ]
        pl_module.train(was_training)
        dm = trainer.datamodule
        mean, std = getattr(dm, "mean", (0.5,)), getattr(dm, "std", (0.5,))
        colors = palette(pl_module.num_classes)
        n = len(self.samples)
        fig, axes = plt.subplots(n, 3, figsize=(3 * 1.6, 1.6 * n + 0.6), squeeze=False, layout="constrained")
        for r, ((image, mask), pred) in enumerate(zip(self.samples, preds)):
            shown = (
                to_hwc(denormalize(image[None].float(), mean, std)[0]),
                colorize(mask, colors, pl_module.ignore_index),
                colorize(pred, colors, pl_module.ignore_index),
            )
            for c, (title, picture) in enumerate(zip(("image", "ground truth", "prediction"), shown)):
                ax = axes[r, c]
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=8)
        if len(colors) <= 20:  # a legend is readable for small label sets (not ADE20K's 150)
            from matplotlib.patches import Patch

            handles = [Patch(color=c, label=name) for c, name in zip(colors, pl_module.class_names())]
            fig.legend(
                handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=6, frameon=False
            )
        fig.suptitle(f"epoch {trainer.current_epoch}", fontsize=9)
        path = Path(trainer.default_root_dir) / "figures" / f"segmentation_epoch{trainer.current_epoch:03d}.png"
        save_figure(fig, path)
        log_image(trainer, "val/segmentation", path)
