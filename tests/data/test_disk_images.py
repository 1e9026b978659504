"""Image files as they are on disk: every PIL mode an ImageFolder may hold reaches the model as the right 8-bit RGB
(16-bit grey used to be clipped to white), a symlink loop neither repeats nor relabels images, and a file that would
block the reading worker (a FIFO) is named instead of hanging it."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from semmae.data.disk_images import find_files, image_folder, open_rgb
from semmae.data.imagefolder import ImageFolderDataModule
from semmae.errors import DataError
from tests.data.test_imagefolder import write_tree

GREY = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 16 x 16, one level per column


def saved(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return str(path)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    wide = GREY.astype(np.uint16) * 257  # the same levels at 16 bits
    path = saved(tmp_path, "grey16.png", Image.fromarray(wide))
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == (16, 16, 3) and (rgb == GREY[..., None]).all()
    assert (np.asarray(Image.open(path).convert("RGB")) == 255).mean() > 0.9  # what PIL alone makes of it: white


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_every_8_bit_mode_becomes_its_rgb(tmp_path, mode):
    base = Image.fromarray(np.stack([GREY, GREY.T, 255 - GREY], axis=-1), mode="RGB")
    image = base.convert(mode)
    path = saved(tmp_path, f"img_{mode}.{'jpg' if mode == 'CMYK' else 'png'}", image)
    rgb = np.asarray(open_rgb(path)).astype(int)
    want = np.asarray(Image.open(path).convert("RGBA" if mode in ("P",) else mode).convert("RGB")).astype(int)
    assert rgb.shape == (16, 16, 3)
    assert np.abs(rgb - want).max() <= 1


def test_images_out_of_any_range_are_refused(tmp_path):
    path = saved(tmp_path, "float.tiff", Image.fromarray(np.linspace(0, 3, 256, dtype=np.float32).reshape(16, 16)))
    with pytest.raises(OSError, match="floating-point image"):
        open_rgb(path)


def test_the_datamodule_reads_16_bit_images_right(tmp_path):
    write_tree(tmp_path, per_class=1)
    for split in ("train", "val"):
        Image.fromarray(np.full((40, 50), 65535, dtype=np.uint16)).save(tmp_path / split / "cat" / "w.png")
        Image.fromarray(np.full((40, 50), 0, dtype=np.uint16)).save(tmp_path / split / "dog" / "b.png")
    dm = ImageFolderDataModule(
        root=str(tmp_path), img_size=32, batch_size=2, num_workers=0, mean=(0, 0, 0), std=(1, 1, 1)
    )
    dm.prepare_data()
    images = torch.cat([batch["image"] for batch in dm.eval_batches("val")])
    paths = [p for p, _ in dm._scans["val"].samples]
    white, black = (
        paths.index(str(tmp_path / "val" / "cat" / "w.png")),
        paths.index(str(tmp_path / "val" / "dog" / "b.png")),
    )
    assert images[white].min() > 0.99 and images[black].max() < 0.01


def test_a_symlink_loop_neither_repeats_nor_relabels(tmp_path):
    write_tree(tmp_path, classes=("a", "b"), per_class=4)
    os.symlink("..", tmp_path / "train" / "a" / "up")  # a/up -> train/: a loop, and b's images below it
    os.symlink(tmp_path / "train" / "a", tmp_path / "train" / "a" / "self")
    folder = image_folder(tmp_path / "train")
    assert len(folder.samples) == 8
    labels = {os.path.basename(os.path.dirname(p)): y for p, y in folder.samples}
    assert labels == {"a": 0, "b": 1}


def test_links_inside_a_class_folder_are_followed(tmp_path):
    write_tree(tmp_path, classes=("a",), per_class=2)
    extra = tmp_path / "train" / "a" / "more"
    extra.mkdir()
    (tmp_path / "train" / "a" / "0.JPEG").rename(extra / "0.JPEG")
    os.symlink(extra, tmp_path / "train" / "a" / "alias")  # the same folder twice: read once
    assert [os.path.relpath(p, tmp_path) for p in find_files(tmp_path / "train" / "a", (".jpeg",))] == [
        "train/a/1.JPEG",
        "train/a/alias/0.JPEG",
    ]


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_a_fifo_is_named_instead_of_blocking_the_worker(tmp_path, decode):
    write_tree(tmp_path, per_class=2)
    fifo = tmp_path / "train" / "cat" / "blocked.png"
    os.mkfifo(fifo)
    dm = ImageFolderDataModule(
        root=str(tmp_path), img_size=32, batch_size=5, num_workers=1, decode=decode, loader_timeout_s=20
    )
    dm.prepare_data()
    with pytest.raises(DataError, match=rf"cannot read image {fifo}: not a regular file \(p"):
        next(iter(dm.train_dataloader()))


def test_a_worker_that_never_answers_names_the_files_it_was_given(tmp_path):
    import time

    write_tree(tmp_path, per_class=2)
    dm = ImageFolderDataModule(
        root=str(tmp_path), img_size=32, batch_size=4, num_workers=1, decode="workers", loader_timeout_s=2
    )
    dm.prepare_data()
    dm._scans["val"].loader = lambda path: time.sleep(30)  # a stalled network mount
    loader = dm.val_dataloader()
    with pytest.raises(
        DataError,
        match=r"a DataLoader worker sent no batch for 2 s \(dataset.loader_timeout_s\); "
        rf"it was reading {tmp_path / 'val' / 'cat' / '0.JPEG'}",
    ):
        next(iter(loader))
