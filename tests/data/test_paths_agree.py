"""The two ways training batches are made must give the same distribution: the resident path (uint8 tensor on the
training device, crop + flip + normalise batched on the device) and the worker path (torchvision v2 per image in
DataLoader workers). Images are horizontal ramps, so an augmented image's value range reads the width of its crop
and its left-right order the flip."""

from __future__ import annotations

import torch

from semmae.data.in_memory import ImageDataModule

N, SIZE = 2000, 28


class RampDataModule(ImageDataModule):
    num_classes = 10
    source_channels = 1

    def load_arrays(self, train: bool):
        ramp = torch.linspace(0, 255, SIZE).round().to(torch.uint8)
        images = ramp.view(1, 1, 1, SIZE).expand(N, 1, SIZE, SIZE).contiguous()
        return images, torch.arange(N) % 10


def augmented(resident: bool) -> torch.Tensor:
    dm = RampDataModule(img_size=32, batch_size=250, num_workers=0, resident=resident, crop_scale=(0.2, 1.0))
    batches = []
    for batch in dm.train_dataloader():
        batches.append(dm.augment_batch(batch, train=True)["image"] if resident else batch["image"])
    return torch.cat(batches)


def crop_stats(images: torch.Tensor) -> dict[str, torch.Tensor]:
    row = images[:, 0, images.shape[2] // 2]  # the middle row: a ramp over the crop's x-extent
    return {
        "width": (row.amax(1) - row.amin(1)) / 2,  # share of the image width the crop spans
        "flipped": (row[:, 0] > row[:, -1]).float(),
        "centre": (row.amax(1) + row.amin(1)) / 2,
    }


def test_resident_and_worker_paths_give_the_same_distribution():
    torch.manual_seed(0)
    device_path, worker_path = augmented(True), augmented(False)
    assert device_path.shape == worker_path.shape == (N, 1, 32, 32)
    assert device_path.dtype == worker_path.dtype == torch.float32
    for images in (device_path, worker_path):
        assert images.min() >= -1.0 - 1e-4 and images.max() <= 1.0 + 1e-4  # (x / 255 - 0.5) / 0.5
    a, b = crop_stats(device_path), crop_stats(worker_path)
    assert abs(a["flipped"].mean() - 0.5) < 0.05 and abs(b["flipped"].mean() - 0.5) < 0.05
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):  # crop widths: same quantiles within sampling noise
        assert abs(a["width"].quantile(q) - b["width"].quantile(q)) < 0.05, q
    assert abs(a["centre"].mean() - b["centre"].mean()) < 0.03  # crops favour no side
    assert abs(device_path.mean() - worker_path.mean()) < 0.03
    assert abs(device_path.std() - worker_path.std()) < 0.03


def test_crop_scale_is_honoured_by_both_paths():
    torch.manual_seed(1)
    for resident in (True, False):
        dm = RampDataModule(img_size=32, batch_size=250, num_workers=0, resident=resident, crop_scale=(0.9, 1.0))
        batch = next(iter(dm.train_dataloader()))
        images = dm.augment_batch(batch, train=True)["image"] if resident else batch["image"]
        width = crop_stats(images)["width"]
        assert width.min() > 0.75, resident  # area >= 0.9 with aspect <= 4/3: width >= sqrt(0.9 * 3 / 4) ~ 0.82
