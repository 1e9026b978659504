"""Segment maps reach the strategy with the batch: dataset maps follow their images through the augmentation on
both data paths, worker hooks (SLIC) run per sample, Fashion-MNIST's foreground segments, and a clear error when a
strategy asks for something the data cannot give."""

import numpy as np
import pytest
import torch

from semmae.data.fashion_mnist import FashionMNISTDataModule, foreground_segments
from semmae.data.in_memory import ImageDataModule
from semmae.errors import ConfigError
from semmae.masking import SemanticMasking


class Blocks(ImageDataModule):
    """Images of flat 8x8 blocks of grey levels 0, 64, 128, 192; the map is the level index (image // 64)."""

    num_classes = 2
    source_channels = 1

    def load_arrays(self, train):
        g = torch.Generator().manual_seed(int(train))
        levels = torch.randint(0, 4, (64, 1, 4, 4), generator=g)
        images = (levels * 64).repeat_interleave(8, 2).repeat_interleave(8, 3).to(torch.uint8)
        return images, torch.zeros(64, dtype=torch.long)

    def map_keys(self):
        return ("segments",)

    def load_maps(self, images, train):
        return {"segments": (images[:, 0] // 64).long()}


def level_of(image, dm):
    """Normalised image [B, 1, H, W] -> the nearest grey level index per pixel."""
    raw = (image[:, 0] * dm.std[0] + dm.mean[0]) * 255
    return (raw / 64).round().clamp(0, 3).long()


@pytest.mark.parametrize("train", [True, False])
def test_resident_maps_follow_the_crop_and_flip(train):
    dm = Blocks(img_size=32, batch_size=16, mean=(0.5,), std=(0.5,), crop_scale=(0.3, 1.0))
    dm.setup()
    batch = next(iter(dm.train_dataloader() if train else dm.val_dataloader()))
    out = dm.augment_batch(batch, train=train)
    assert out["segments"].shape == (16, 32, 32) and out["image"].shape == (16, 1, 32, 32)
    agree = (level_of(out["image"], dm) == out["segments"]).float().mean()
    assert agree > 0.9, agree  # bilinear images vs nearest maps differ only along block edges
    if train:
        assert "image_plain" in out


def test_worker_path_carries_maps_and_runs_hooks():
    dm = Blocks(img_size=32, batch_size=8, mean=(0.5,), std=(0.5,), resident=False, num_workers=0)
    dm.provide("count", lambda image: (image > 0).sum())
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["segments"].shape == (8, 32, 32)
    assert (level_of(batch["image"], dm) == batch["segments"]).float().mean() > 0.9
    assert torch.equal(batch["count"], (batch["image"] > 0).flatten(1).sum(1))


def test_a_worker_hook_switches_the_resident_path_off(fmnist_root):
    dm = FashionMNISTDataModule(root=str(fmnist_root), batch_size=8, num_workers=0, train_subset=32, val_subset=16)
    assert dm.resident
    s = SemanticMasking(segmenter="slic")
    for key, producer in s.data_needs().items():
        dm.provide(key, producer, needed_by=s.describe())
    assert not dm.resident
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["segments"].shape == (8, 32, 32) and batch["segments"].dtype == torch.int64
    m = s(batch["image"], (8, 8), torch.Generator().manual_seed(0), batch)
    assert torch.all((~m.mask).sum(1) == 16)


def test_given_without_a_map_is_a_one_line_config_error(fmnist_root):
    dm = FashionMNISTDataModule(root=str(fmnist_root))
    with pytest.raises(ConfigError, match="masking.segmenter=given reads batch\\['segments'\\]: set dataset.segments"):
        dm.provide("segments", None, needed_by=SemanticMasking(segmenter="given").describe())
    with pytest.raises(ConfigError, match="dataset.segments"):
        FashionMNISTDataModule(root=str(fmnist_root), segments="edges")


def test_foreground_segments_split_garment_and_background_into_components():
    img = np.zeros((2, 1, 6, 6), dtype=np.uint8)
    img[0, 0, 1:3, 1:3] = 200  # two garment pieces; the background around them is one component
    img[0, 0, 4:6, 4:6] = 100
    img[1, 0, :, 2] = 50  # a vertical stripe splits the background in two
    seg = foreground_segments(torch.from_numpy(img)).numpy()
    assert seg.dtype == np.int16
    a = seg[0]
    assert a[1, 1] == a[2, 2] and a[4, 4] == a[5, 5] and a[1, 1] != a[4, 4] and 0 < a[1, 1] < 1000
    assert (a[img[0, 0] == 0] == 1001).all()
    b = seg[1]
    assert (b[:, 2] == 1).all() and b[0, 0] == 1001 and b[0, 5] == 1002  # numbered within the image


def test_fashion_mnist_foreground_segments_reach_the_batch(fmnist_root):
    dm = FashionMNISTDataModule(
        root=str(fmnist_root), batch_size=16, segments="foreground", train_subset=64, val_subset=32
    )
    dm.provide("segments", None, needed_by="test")
    dm.setup()
    assert dm.maps["train"]["segments"].shape == (64, 32, 32)
    out = dm.augment_batch(next(iter(dm.train_dataloader())), train=True)
    assert out["segments"].shape == (16, 32, 32)
    m = SemanticMasking(segmenter="given")(out["image"], (8, 8), torch.Generator().manual_seed(0), out)
    assert torch.all((~m.mask).sum(1) == 16)
