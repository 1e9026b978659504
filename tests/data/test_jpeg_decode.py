"""The decode-on-device ImageFolder path, exercised on the CPU (the same code runs nvJPEG on a GPU)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from semmae.data import disk_images, jpeg_decode
from semmae.data.imagefolder import ImageFolderDataModule
from tests.data.test_imagefolder import write_tree


def smooth_image(h, w, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([127 + 100 * np.sin(x / (7 + c) + rng.uniform(0, 3)) * np.cos(y / (9 + c)) for c in range(3)], -1)
    return img.clip(0, 255).astype(np.uint8)


def test_decoded_batch_matches_the_pil_path(tmp_path):
    for i, (h, w) in enumerate([(60, 80), (90, 50), (64, 64)]):
        d = tmp_path / "val" / f"c{i}"
        d.mkdir(parents=True)
        Image.fromarray(smooth_image(h, w, i)).save(d / "a.jpg", quality=95)
        (tmp_path / "train" / f"c{i}").mkdir(parents=True)
        Image.fromarray(smooth_image(h, w, i)).save(tmp_path / "train" / f"c{i}" / "a.jpg", quality=95)
    dm_dev = ImageFolderDataModule(root=str(tmp_path), img_size=32, batch_size=3, num_workers=0, decode="device")
    dm_pil = ImageFolderDataModule(root=str(tmp_path), img_size=32, batch_size=3, num_workers=0, decode="workers")
    dm_dev.setup()
    dm_pil.setup()
    raw = next(iter(dm_dev.val_dataloader()))
    assert isinstance(raw["jpeg"], list) and raw["jpeg"][0].dtype == torch.uint8
    moved = dm_dev.transfer_batch_to_device(raw, torch.device("cpu"), 0)
    ours = dm_dev.augment_batch(moved, train=False)["image"]
    ref = next(iter(dm_pil.val_dataloader()))["image"]
    assert ours.shape == ref.shape == (3, 3, 32, 32)
    # bilinear+antialias vs PIL bicubic: same picture up to interpolation differences
    assert (ours - ref).abs().mean() < 0.1
    train = dm_dev.augment_batch(
        dm_dev.transfer_batch_to_device(next(iter(dm_dev.train_dataloader())), torch.device("cpu"), 0), train=True
    )
    assert train["image"].shape == (3, 3, 32, 32) and train["image_plain"].shape == (3, 3, 32, 32)
    assert "jpeg" not in train


def test_train_views_crop_inside_each_image():
    g = torch.Generator().manual_seed(0)
    images = [torch.full((3, 40, 100), 200, dtype=torch.uint8), torch.full((3, 120, 30), 10, dtype=torch.uint8)]
    out = jpeg_decode.train_views(images, 16, scale=(0.2, 1.0), generator=g)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out[0], torch.full_like(out[0], 200.0)) and torch.allclose(
        out[1], torch.full_like(out[1], 10.0)
    )


def test_eval_views_match_torchvision_geometry():
    img = torch.from_numpy(smooth_image(50, 80, 0)).permute(2, 0, 1).contiguous()
    ours = jpeg_decode.eval_views([img], 32)
    ref = T.CenterCrop(32)(T.Resize(37, antialias=True)(img[None].float()))
    assert ours.shape == (1, 3, 32, 32)
    assert (ours - ref).abs().max() < 1.0


def test_auto_decodes_in_workers_without_gpu(tmp_path):
    write_tree(tmp_path)
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=32, batch_size=2, num_workers=0)
    assert not dm.on_device()


@pytest.mark.timeout(60)  # the regression was a hang: fail instead of waiting forever
def test_device_decode_with_workers_runs_to_completion(tmp_path):
    write_tree(tmp_path, per_class=5)
    dm = ImageFolderDataModule(
        root=str(tmp_path), img_size=32, batch_size=4, num_workers=2, decode="device", loader_timeout_s=30
    )
    dm.setup()
    for _epoch in range(2):  # persistent workers serve the second epoch too
        for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
            sizes = []
            for raw in loader:
                out = dm.augment_batch(dm.transfer_batch_to_device(raw, torch.device("cpu"), 0), train=split == "train")
                assert out["image"].shape[1:] == (3, 32, 32) and "jpeg" not in out and "path" not in out
                sizes.append(len(out["label"]))
            assert sum(sizes) == (8 if split == "train" else 10)


def test_read_bytes_is_ordinary_memory(tmp_path):
    write_tree(tmp_path, per_class=1)
    path = next((tmp_path / "train").rglob("*.JPEG"))
    data = disk_images.read_bytes(str(path), skip=False)
    assert not data.untyped_storage().is_shared()  # a file-mapped storage cannot be sent from a worker
    assert bytes(data.numpy()) == path.read_bytes()
