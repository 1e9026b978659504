import numpy as np
import pytest
from PIL import Image

from semmae.data.imagefolder import ImageFolderDataModule
from semmae.errors import ConfigError, DataError


def write_tree(root, classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.JPEG", "JPEG")
    return root


def test_imagefolder_tree(tmp_path):
    write_tree(tmp_path)
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=32, batch_size=4, num_workers=0)
    dm.prepare_data()
    dm.setup()
    assert dm.num_classes == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and set(batch["label"].tolist()) <= {0, 1}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[1:] == (3, 32, 32)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ConfigError, match="dataset.root"):
        ImageFolderDataModule(root=None)
    with pytest.raises(DataError, match="not found"):
        ImageFolderDataModule(root=str(tmp_path / "missing")).prepare_data()
