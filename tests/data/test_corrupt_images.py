"""A corrupt image in an ImageFolder: the run stops with one line naming the file, or with skip_corrupt the image
leaves its batch with a warning naming it; both decoding paths, in the main process and across DataLoader workers."""

import pytest
import torch

from semmae.data.disk_images import CorruptImageWarning
from semmae.data.imagefolder import ImageFolderDataModule
from semmae.errors import DataError
from tests.data.test_imagefolder import truncate, write_tree


def batches(dm, split="val"):
    """Every batch of a split, decoded as training would (a no-op for the worker-decode path)."""
    loader = dm.val_dataloader() if split == "val" else dm.train_dataloader()
    return [
        dm.augment_batch(dm.transfer_batch_to_device(b, torch.device("cpu"), 0), train=split == "train") for b in loader
    ]


def bad_tree(tmp_path, how):
    write_tree(tmp_path, per_class=3)
    bad = tmp_path / "val" / "dog" / "1.JPEG"
    if how == "truncated":
        truncate(bad)
    else:
        bad.write_text("this is not an image\n")
    return bad


@pytest.mark.timeout(60)
@pytest.mark.parametrize("decode", ["workers", "device"])
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("how", ["truncated", "not_an_image"])
def test_corrupt_image_stops_naming_the_file(tmp_path, decode, num_workers, how):
    bad = bad_tree(tmp_path, how)
    dm = ImageFolderDataModule(
        root=str(tmp_path), img_size=32, batch_size=6, num_workers=num_workers, decode=decode, loader_timeout_s=30
    )
    dm.setup()
    with pytest.raises(DataError) as info:
        batches(dm)
    message = str(info.value)
    assert str(bad) in message and "skip_corrupt" in message
    assert "\n" not in message and "Traceback" not in message  # one line, also after crossing the worker boundary


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_skip_corrupt_drops_the_image_and_warns_naming_it(tmp_path, decode):
    bad = bad_tree(tmp_path, "truncated")
    dm = ImageFolderDataModule(
        root=str(tmp_path), img_size=32, batch_size=6, num_workers=0, decode=decode, skip_corrupt=True
    )
    dm.setup()
    with pytest.warns(CorruptImageWarning, match=str(bad)):
        out = batches(dm)
    assert [len(b["label"]) for b in out] == [5] and out[0]["image"].shape == (5, 3, 32, 32)
    assert out[0]["index"].tolist() == [0, 1, 2, 3, 5]  # the others keep their labels and indices
