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


def truncate(path, keep=0.5):
    """Cut a real JPEG file short, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_empty_class_folder_is_named(tmp_path, decode):
    write_tree(tmp_path)
    (tmp_path / "train" / "bird").mkdir()
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=32, num_workers=0, decode=decode)
    with pytest.raises(DataError) as info:
        dm.setup()
    assert str(tmp_path / "train" / "bird") in str(info.value) and "\n" not in str(info.value)


def test_split_without_class_folders_is_named(tmp_path):
    write_tree(tmp_path)
    for c in ("cat", "dog"):
        for f in (tmp_path / "val" / c).iterdir():
            f.unlink()
        (tmp_path / "val" / c).rmdir()
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=32, num_workers=0)
    with pytest.raises(DataError, match="no class folders in .*val"):
        dm.setup()


def test_negative_loader_timeout_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="loader_timeout_s"):
        ImageFolderDataModule(root=str(tmp_path), loader_timeout_s=-1)
