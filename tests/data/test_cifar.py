import pickle

import numpy as np
import pytest
import torch

from semmae.data.cifar import CIFARDataModule, load_cifar
from semmae.errors import ConfigError, DataError


def write_cifar(root, num_classes: int, n_per_file: int = 20):
    rng = np.random.default_rng(0)
    if num_classes == 10:
        base = root / "cifar-10-batches-py"
        files, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        base = root / "cifar-100-python"
        files, key = ["train", "test"], b"fine_labels"
    base.mkdir(parents=True)
    for f in files:
        data = rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8)
        entry = {b"data": data, key: rng.integers(0, num_classes, n_per_file).tolist(), b"batch_label": b"x"}
        with open(base / f, "wb") as fh:
            pickle.dump(entry, fh)
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
    dm = CIFARDataModule(root=str(tmp_path), num_classes=10, img_size=32, batch_size=16,
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
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
