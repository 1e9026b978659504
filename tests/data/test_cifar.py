import pickle
import struct

import numpy as np
import pytest
import torch

from semmae.data.cifar import CIFARDataModule, load_cifar
from semmae.errors import ConfigError, DataError


class Py2Str(bytes):
    """A Python 2 `str`, which CIFAR's cPickle files hold (dict keys, names): pickled as STRING, so Python 3 reads it
    as str with encoding="latin1" (torchvision's reader) and as bytes with encoding="bytes" (CIFAR's own recipe)."""


class Py2Pickler(pickle._Pickler):
    """Protocol 2 pickles with Python 2 strings: the format of the real CIFAR batches."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2str


def dump_py2(obj, path):
    with open(path, "wb") as fh:
        Py2Pickler(fh, protocol=2).dump(obj)


def write_cifar(root, num_classes: int, n_per_file: int = 20):
    """The release layout: the batches (keys data, labels / fine_labels, ...) and the meta file with the class names."""
    rng = np.random.default_rng(0)
    if num_classes == 10:
        base = root / "cifar-10-batches-py"
        files, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
        meta = ("batches.meta", {Py2Str(b"label_names"): [Py2Str(b"c%d" % i) for i in range(10)]})
    else:
        base = root / "cifar-100-python"
        files, key = ["train", "test"], "fine_labels"
        meta = (
            "meta",
            {
                Py2Str(b"fine_label_names"): [Py2Str(b"c%d" % i) for i in range(100)],
                Py2Str(b"coarse_label_names"): [Py2Str(b"s%d" % i) for i in range(20)],
            },
        )
    base.mkdir(parents=True)
    for f in files:
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        entry = {
            Py2Str(b"data"): data,
            Py2Str(key.encode()): rng.integers(0, num_classes, n_per_file).tolist(),
            Py2Str(b"batch_label"): Py2Str(b"x"),
        }
        dump_py2(entry, base / f)
    dump_py2(meta[1], base / meta[0])
    return base


@pytest.mark.parametrize("num_classes,n_train", [(10, 100), (100, 20)])
def test_loads_pickle_batches(tmp_path, num_classes, n_train):
    base = write_cifar(tmp_path, num_classes)
    x, y = load_cifar(str(tmp_path), num_classes, train=True)
    assert x.shape == (n_train, 3, 32, 32) and x.dtype == torch.uint8
    assert int(y.max()) < num_classes
    # channel-major rows: the first 1024 bytes are the red plane
    first = "data_batch_1" if num_classes == 10 else "train"
    with open(base / first, "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")[b"data"][0]
    assert np.array_equal(x[0, 0].numpy().reshape(-1), raw[:1024])


def test_datamodule(tmp_path):
    write_cifar(tmp_path, 10)
    dm = CIFARDataModule(
        root=str(tmp_path), num_classes=10, img_size=32, batch_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )
    dm.setup()
    batch = dm.augment_batch(next(iter(dm.train_dataloader())), train=True)
    assert batch["image"].shape == (16, 3, 32, 32)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_cifar(str(tmp_path), 10, train=True)
    with pytest.raises(ConfigError, match="dataset.root"):
        load_cifar(None, 10, train=True)
    with pytest.raises(ConfigError, match="10 or 100"):
        CIFARDataModule(root=str(tmp_path), num_classes=7)


def test_torchvision_reads_any_copy_without_md5_sums(tmp_path):
    from torchvision.datasets import CIFAR100

    from semmae.data import cifar

    assert issubclass(cifar.FILES_ONLY[100], CIFAR100)  # torchvision's reader, not ours
    base = write_cifar(tmp_path, 100)
    x, y = load_cifar(str(tmp_path), 100, train=False)  # the fixture's md5 sums are not the release's
    with open(base / "test", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    assert torch.equal(x, torch.from_numpy(raw[b"data"]).view(-1, 3, 32, 32))
    assert y.tolist() == raw[b"fine_labels"] and y.dtype == torch.long
    (base / "meta").unlink()  # torchvision reads the class names from it: without it the copy is incomplete
    with pytest.raises(DataError, match="not found"):
        load_cifar(str(tmp_path), 100, train=False)
