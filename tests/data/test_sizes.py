"""The sizes a run asks of its data: a batch larger than the training set is refused (it trained nothing and exited 0),
subset sizes are whole numbers >= 1 (a negative one sliced from the end), a subset larger than its split says so,
and an ImageFolder's class count is its folders' (dataset=imagenet kept 1000 for any tree)."""

import pytest

from semmae.data.fashion_mnist import FashionMNISTDataModule
from semmae.data.imagefolder import ImageFolderDataModule
from semmae.data.interface import SubsetWarning
from semmae.errors import ConfigError, DataError
from tests.conftest import run_entry
from tests.data.test_imagefolder import write_tree


def fmnist(root, **kw):
    return FashionMNISTDataModule(root=str(root), download=False, num_workers=0, **kw)


@pytest.mark.parametrize("resident", [True, False])
def test_a_batch_larger_than_the_training_set_is_refused(fmnist_root, resident):
    dm = fmnist(fmnist_root, batch_size=256, train_subset=100, resident=resident)
    dm.prepare_data()
    with pytest.raises(ConfigError, match=r"dataset.batch_size=256 is more than the 100 training images"):
        dm.train_dataloader()
    assert len(fmnist(fmnist_root, batch_size=100, train_subset=100, resident=resident).train_dataloader()) == 1


@pytest.mark.parametrize(
    "key,value", [("train_subset", 0), ("train_subset", -59488), ("val_subset", 0), ("eval_batch_size", 0)]
)
def test_sizes_below_one_are_refused(fmnist_root, key, value):
    with pytest.raises(ConfigError, match=rf"dataset.{key}"):
        fmnist(fmnist_root, **{key: value})


def test_a_subset_larger_than_its_split_says_so(fmnist_root):
    dm = fmnist(fmnist_root, train_subset=100000)  # the fixture has 600 training images
    with pytest.warns(SubsetWarning, match=r"dataset.train_subset=100000 is more than the 600 images .* using all 600"):
        dm.setup()
    assert dm.split_size("train") == 600


def test_the_class_count_is_the_folders(tmp_path):
    write_tree(tmp_path, classes=("cat", "dog"))
    dm = ImageFolderDataModule(root=str(tmp_path), num_workers=0)
    dm.prepare_data()
    assert dm.num_classes == 2
    with pytest.raises(ConfigError, match=r"dataset.num_classes=1000, but .*train has 2 class folders"):
        ImageFolderDataModule(root=str(tmp_path), num_classes=1000, num_workers=0).prepare_data()
    with pytest.raises(ConfigError, match=r"dataset.num_classes=1, but"):
        ImageFolderDataModule(root=str(tmp_path), num_classes=1, num_workers=0).prepare_data()


def test_train_and_val_must_share_their_classes(tmp_path):
    write_tree(tmp_path, classes=("cat", "dog"))
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "fox")
    with pytest.raises(DataError, match=r"different class folders \(e.g. dog, fox\)"):
        ImageFolderDataModule(root=str(tmp_path), num_workers=0).prepare_data()


def test_imagenet_probes_with_the_folders_class_count(tmp_path):
    write_tree(tmp_path / "data", classes=("cat", "dog"), per_class=8)
    code, err = run_entry(
        "linprobe",
        [
            "dataset=imagenet",
            f"dataset.root={tmp_path / 'data'}",
            "ckpt=null",
            "backbone.img_size=32",
            "dataset.batch_size=8",
            "dataset.num_workers=0",
            "trainer.max_epochs=1",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    assert code == 0, err
    import json

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["dataset"]["num_classes"] == 2 and results["config"]["model"]["num_classes"] == 2
    assert results["metrics"]["test/top1"] > 0


def test_a_batch_larger_than_the_data_fails_the_run(tmp_path, fmnist_root):
    code, err = run_entry(
        "pretrain",
        [
            f"dataset.root={fmnist_root}",
            "dataset.train_subset=64",
            "dataset.val_subset=32",
            "dataset.batch_size=256",
            "trainer.max_epochs=1",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
    )
    assert code == 2 and "dataset.batch_size=256 is more than the 64 training images" in err.splitlines()[-1]
