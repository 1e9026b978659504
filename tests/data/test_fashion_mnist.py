import gzip

import numpy as np
import pytest
import torch

from semmae.data import fashion_mnist
from semmae.data.fashion_mnist import FashionMNISTDataModule, load_fashion_mnist
from semmae.data.idx import read_idx, write_idx
from semmae.errors import DataError
from tests.conftest import write_fashion_mnist


def test_idx_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[4:8], "big") == 2


def test_idx_rejects_garbage(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "t", np.zeros((4, 2), np.uint8))
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t")


@pytest.mark.parametrize("gz", [True, False])
def test_loads_from_root(tmp_path, gz):
    root = write_fashion_mnist(tmp_path / "fm", n_train=50, n_test=20, gz=gz)
    x, y = load_fashion_mnist(str(root), train=True, download=False)
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.long
    xt, yt = load_fashion_mnist(str(root), train=False, download=False)
    assert len(xt) == 20 and int(yt.max()) < 10


def test_torchvision_layout_is_found(tmp_path):
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_train=10, n_test=10)
    x, _ = load_fashion_mnist(str(tmp_path), train=True, download=False)
    assert len(x) == 10


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path / "nope"), train=True, download=False)


def test_no_debian_package_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="not found"):
        fashion_mnist.locate(None, download=False)


def test_datamodule_pads_to_canvas_and_batches(fmnist_root):
    dm = FashionMNISTDataModule(root=str(fmnist_root), img_size=32, batch_size=64, eval_batch_size=100)
    dm.setup()
    images, labels = dm.data["train"]
    assert images.shape[1:] == (1, 32, 32)
    assert torch.all(images[:, :, :2] == 0) and torch.all(images[:, :, :, -2:] == 0)  # 2-px black border
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (64, 1, 32, 32)
    out = dm.augment_batch(batch, train=True)["image"]
    assert out.shape == (64, 1, 32, 32) and out.dtype == torch.float32
    assert len(dm.train_dataloader()) == 600 // 64
    val = list(dm.val_dataloader())
    assert sum(len(b["label"]) for b in val) == 300 and all(b["valid"].all() for b in val)


def test_three_channel_replication(fmnist_root):
    dm = FashionMNISTDataModule(root=str(fmnist_root), img_size=32, channels=3, batch_size=8)
    dm.setup()
    out = dm.augment_batch(next(iter(dm.val_dataloader())), train=False)["image"]
    assert out.shape[1] == 3 and torch.equal(out[:, 0], out[:, 2])


def test_worker_path_matches_resident_shapes(fmnist_root):
    dm = FashionMNISTDataModule(root=str(fmnist_root), img_size=32, batch_size=16, resident=False, num_workers=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert dm.augment_batch(batch, train=True) is batch  # already transformed in the worker


@pytest.mark.parametrize("cut", ["truncated", "not_gzip"])
def test_broken_gz_names_the_file(tmp_path, cut):
    root = write_fashion_mnist(tmp_path / "fm", n_train=50, n_test=20)
    bad = root / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:200] if cut == "truncated" else b"not a gzip file at all")
    with pytest.raises(DataError) as info:
        load_fashion_mnist(str(root), train=True, download=False)
    assert str(bad) in str(info.value) and "truncated or corrupt" in str(info.value)


def test_missing_root_creates_nothing_and_says_where_it_looked(tmp_path):
    root = tmp_path / "nonexistent"
    with pytest.raises(DataError) as info:
        load_fashion_mnist(str(root), train=True, download=True)
    assert not root.exists()
    assert str(root / "FashionMNIST" / "raw") in str(info.value) and "dataset-fashion-mnist" in str(info.value)


def test_failed_download_leaves_no_folders(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, train, download):
        (tmp_path / "root" / "FashionMNIST" / "raw").mkdir(parents=True)  # as torchvision does before fetching
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError, match="download failed"):
        fashion_mnist.locate(str(tmp_path / "root"), download=True)
    assert list((tmp_path / "root").iterdir()) == []
