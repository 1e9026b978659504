"""At the end of each validation epoch: original / masked / reconstruction of a few fixed validation images,
saved as figures/reconstruction_epochNNN.png in the run directory and sent to the logger."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from semmae.models.mae import patchify, unpatchify
from semmae.utils.plotting import denormalize, log_image, plt, save_figure, to_hwc


class ReconstructionFigure(L.Callback):
    def __init__(self, num_images: int = 6):
        self.num_images = int(num_images)
        self.images: torch.Tensor | None = None
        self.batch: dict | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and self.images is None:
            n = self.num_images
            self.batch = {k: (v[:n] if torch.is_tensor(v) else v) for k, v in batch.items()}
            self.images = self.batch["image"].detach()

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or self.images is None:
            return
        mae = pl_module.mae
        with torch.no_grad():
            mask = pl_module.make_mask(self.batch, stream=1, batch_idx=0)
            _, pred = mae(self.images, mask)
            recon = mae.reconstruct(self.images, pred.float())
            patches = patchify(self.images, mae.patch_size)
            hidden = mask.mask.unsqueeze(-1).expand_as(patches).to(patches.dtype)
            hidden_px = unpatchify(hidden, mae.patch_size, mae.grid_size, mae.in_chans) > 0
            pasted = torch.where(hidden_px, recon, self.images)
        dm = trainer.datamodule
        mean, std = getattr(dm, "mean", (0.5,)), getattr(dm, "std", (0.5,))
        original = denormalize(self.images.float(), mean, std)
        cols = {
            "original": original,
            "masked": torch.where(hidden_px, torch.full_like(original, 0.5), original),
            "reconstruction": denormalize(recon.float(), mean, std),
            "recon. + visible": denormalize(pasted.float(), mean, std),
        }
        n = self.images.shape[0]
        fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n), squeeze=False)
        for c, (title, shown) in enumerate(cols.items()):
            for r in range(n):
                ax = axes[r, c]
                ax.imshow(to_hwc(shown[r]), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=8)
        fig.suptitle(f"epoch {trainer.current_epoch}", fontsize=9)
        path = Path(trainer.default_root_dir) / "figures" / f"reconstruction_epoch{trainer.current_epoch:03d}.png"
        save_figure(fig, path)
        log_image(trainer, "val/reconstruction", path)
