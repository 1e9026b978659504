"""The datamodule interface (semmae.data.interface.SemmaeDataModule): every datamodule answers it, and its callers (the
feature cache, fine-tuning's augmentation, semmae-masks, semmae-analyze, the linear probe) use it, not the
datamodules' classes or internals: a datamodule of none of semmae's classes (Toy) serves them all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.datasets import ImageFolder

from semmae.data import disk_images, jpeg_decode
from semmae.data.ade20k import ADE20KDataModule
from semmae.data.cifar import CIFARDataModule
from semmae.data.fashion_mnist import FashionMNISTDataModule
from semmae.data.fashion_mnist_seg import FashionMNISTSegDataModule, garment_masks
from semmae.data.feature_cache import FeatureDataModule
from semmae.data.finetune_augment import BatchRandomErasing, FinetuneAugment
from semmae.data.imagefolder import ImageFolderDataModule
from semmae.data.interface import SemmaeDataModule
from semmae.data.loaders import split_loader, subset_indices
from semmae.data.resident import ResidentBatches
from semmae.errors import ConfigError
from tests.data.test_ade20k import write_ade20k
from tests.data.test_cifar import write_cifar
from tests.data.test_imagefolder import write_tree

CPU = torch.device("cpu")


class Toy(SemmaeDataModule):
    """The interface alone: images whose pixels are their index, a list of dicts as the dataset; training batches
    are "augmented" by self.augmentation (+1000), evaluation batches are left as they are."""

    def __init__(self, img_size: int = 4, channels: int = 1, sizes=(10, 7), **loader):
        loader.setdefault("batch_size", 4)
        loader.setdefault("num_workers", 0)
        super().__init__(**loader)
        self.img_size, self.channels, self.crop_scale = img_size, channels, (0.2, 1.0)
        self.sizes = dict(zip(("train", "val"), sizes))
        self.augmentation = lambda images, generator=None: images + 1000

    def split_size(self, split):
        return self.sizes[split]

    def split_dataset(self, split, train):
        return [
            {"image": torch.full((self.channels, self.img_size, self.img_size), float(i)), "label": i % 3, "index": i}
            for i in range(self.sizes[split])
        ]

    def augment_batch(self, batch, train):
        return {**batch, "image": self.augmentation(batch["image"])} if train else batch

    @property
    def in_memory(self):
        return True

    @property
    def train_augmentation_kind(self):
        return "batch"

    @property
    def train_augmentation(self):
        return self.augmentation

    def set_train_augmentation(self, transform):
        self.augmentation = transform


def pixel_ids(batches) -> list[int]:
    return [int(img.flatten()[0]) for b in batches for img in b["image"]]


# --- every datamodule answers the interface ----------------------------------------------------------------
@pytest.fixture(scope="module")
def roots(tmp_path_factory, fmnist_root):
    tmp = tmp_path_factory.mktemp("interface")
    write_cifar(tmp / "cifar", 10)
    return {
        "fmnist": fmnist_root,
        "cifar": tmp / "cifar",
        "folder": write_tree(tmp / "folder", per_class=4),
        "ade": write_ade20k(tmp / "ade", n_train=3, n_val=2),
    }


BUILDERS = {
    "fashion_mnist": lambda r: FashionMNISTDataModule(
        root=str(r["fmnist"]), batch_size=16, eval_batch_size=24, num_workers=0, train_subset=40, val_subset=30
    ),
    "fashion_mnist_workers": lambda r: FashionMNISTDataModule(
        root=str(r["fmnist"]),
        batch_size=16,
        eval_batch_size=24,
        num_workers=0,
        resident=False,
        train_subset=40,
        val_subset=30,
    ),
    "fashion_mnist_segments": lambda r: FashionMNISTDataModule(
        root=str(r["fmnist"]), batch_size=16, num_workers=0, segments="foreground", train_subset=40, val_subset=30
    ),
    "fashion_mnist_seg": lambda r: FashionMNISTSegDataModule(
        root=str(r["fmnist"]), batch_size=16, eval_batch_size=24, num_workers=0, train_subset=40, val_subset=30
    ),
    "cifar10": lambda r: CIFARDataModule(
        root=str(r["cifar"]), num_classes=10, batch_size=16, eval_batch_size=8, num_workers=0
    ),
    "imagefolder": lambda r: ImageFolderDataModule(
        root=str(r["folder"]), img_size=32, batch_size=3, num_workers=0, decode="workers"
    ),
    "imagefolder_device": lambda r: ImageFolderDataModule(
        root=str(r["folder"]), img_size=32, batch_size=3, num_workers=0, decode="device"
    ),
    "ade20k": lambda r: ADE20KDataModule(
        root=str(r["ade"]), crop_size=24, scale=(128, 32), batch_size=2, num_workers=0
    ),
    "toy": lambda r: Toy(eval_batch_size=3),
}
# in_memory, train_augmentation_kind
ANSWERS = {
    "fashion_mnist": (True, "batch"),
    "fashion_mnist_workers": (True, None),
    "fashion_mnist_segments": (True, "batch"),
    "fashion_mnist_seg": (True, None),
    "cifar10": (True, "batch"),
    "imagefolder": (False, "image"),
    "imagefolder_device": (False, None),
    "ade20k": (False, None),
    "toy": (True, "batch"),
}


def validation_view(dm):
    """What the validation loop sees: the val loader's batches, moved to the device and through the hook."""
    return [dm.augment_batch(dm.transfer_batch_to_device(b, CPU, 0), train=False) for b in dm.val_dataloader()]


def flat_images(batches):
    return [img for b in batches for img in b["image"]]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_datamodule_answers_the_interface(name, roots):
    dm = BUILDERS[name](roots)
    assert isinstance(dm, SemmaeDataModule)
    assert (dm.in_memory, dm.train_augmentation_kind) == ANSWERS[name]
    for key in (
        "batch_size",
        "eval_batch_size",
        "num_workers",
        "pin_memory",
        "loader_timeout_s",
        "seed",
        "name",
        "mean",
        "std",
    ):
        assert hasattr(dm, key), key
    dm.prepare_data()
    torch.manual_seed(0)
    view = list(dm.eval_batches("val", CPU))
    assert len(flat_images(view)) == dm.split_size("val")
    torch.manual_seed(1)  # nothing random in the evaluation view
    reference = validation_view(dm)
    assert all(torch.equal(a, b) for a, b in zip(flat_images(view), flat_images(reference)))
    assert all(len(b["image"]) <= dm.eval_batch_size for b in view)
    # the training split in its evaluation view: un-augmented, every image once, in order
    train = flat_images(dm.eval_batches("train"))
    assert len(train) == dm.split_size("train") and all(
        torch.equal(a, b) for a, b in zip(train, flat_images(dm.eval_batches("train")))
    )
    # limit and indices
    assert len(flat_images(dm.eval_batches("val", limit=1))) == 1
    assert len(flat_images(dm.eval_batches("val", limit=3))) == min(3, dm.split_size("val"))
    picked = flat_images(dm.eval_batches("train", indices=[2, 0]))
    assert len(picked) == 2 and torch.equal(picked[0], train[2]) and torch.equal(picked[1], train[0])
    if ANSWERS[name][1] is None:
        with pytest.raises(ConfigError):
            dm.set_train_augmentation(lambda images: images)


def test_eval_batches_of_the_training_split_carry_its_own_maps(fmnist_root):
    """The segment maps (and fashion_mnist_seg's label masks) travel with their images, also for the train split."""
    dm = FashionMNISTDataModule(
        root=str(fmnist_root), batch_size=16, num_workers=0, segments="foreground", train_subset=40, val_subset=30
    )
    segments = torch.cat([b["segments"] for b in dm.eval_batches("train")])
    assert torch.equal(segments, dm.maps["train"]["segments"])
    seg = FashionMNISTSegDataModule(root=str(fmnist_root), batch_size=16, num_workers=0, train_subset=40, val_subset=30)
    masks = torch.cat([b["mask"] for b in seg.eval_batches("train")])
    images, labels = seg.data["train"]
    assert torch.equal(masks, garment_masks(images, labels).long())
    assert "_loader" not in vars(FashionMNISTSegDataModule)  # its masks use ImageDataModule's maps


def test_eval_batches_read_all_of_the_split_on_every_rank(monkeypatch, fmnist_root):
    import semmae.data.resident as resident

    dm = FashionMNISTDataModule(root=str(fmnist_root), eval_batch_size=8, num_workers=0, val_subset=30)
    monkeypatch.setattr(resident, "dist_rank_world", lambda: (1, 2))  # rank 1 of 2
    assert len(torch.cat([b["label"] for b in dm.val_dataloader()])) == 15  # the validation loop: a shard
    assert len(torch.cat([b["label"] for b in dm.eval_batches("val")])) == 30  # the evaluation view: all


# --- one DataLoader builder, one file scan ----------------------------------------------------------------
def test_split_loader_passes_whole_batches_on():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    ds = ResidentBatches(images, torch.arange(10), batch_size=4, train=False)
    loader = split_loader(ds, None, train=False, num_workers=3, pin=True, timeout_s=5)
    assert loader.batch_size is None and loader.num_workers == 0 and not loader.pin_memory
    assert [b["index"].tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_loaders_are_built_by_the_base_class():
    for cls in (
        FashionMNISTDataModule,
        FashionMNISTSegDataModule,
        CIFARDataModule,
        ImageFolderDataModule,
        ADE20KDataModule,
        FeatureDataModule,
    ):
        for hook in ("train_dataloader", "val_dataloader", "test_dataloader", "on_after_batch_transfer"):
            assert getattr(cls, hook) is getattr(SemmaeDataModule, hook), (cls, hook)


def test_the_file_scan_lists_what_torchvision_lists(tmp_path):
    for rel in (
        "b/2.JPEG",
        "b/1.png",
        "b/sub/0.jpg",
        "b/sub/x.txt",
        "a/9.jpeg",
        "a/a/8.Jpg",
        "a/.hidden.jpg",
        "c/notes.md",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    ours = disk_images.ScannedImageFolder(str(tmp_path), allow_empty=True)  # c/ has no image: empty is allowed
    theirs = ImageFolder(str(tmp_path), allow_empty=True)
    assert ours.samples == theirs.samples and ours.classes == theirs.classes
    flat = disk_images.find_files(tmp_path / "b", (".jpg", ".png"), recursive=False)
    assert flat == [os.path.join(str(tmp_path / "b"), "1.png")]


def test_imagenet_statistics_are_timms():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    dm = ImageFolderDataModule(root="/nonexistent")
    assert (dm.mean, dm.std) == (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
    assert ADE20KDataModule(root="/nonexistent").options["mean"] == tuple(IMAGENET_DEFAULT_MEAN)
    with pytest.raises(ConfigError, match="one image per batch"):
        ADE20KDataModule(root="/nonexistent", eval_batch_size=4)


def test_imagefolder_set_up_before_its_trainer_keeps_decoding_in_the_workers(roots):
    dm = ImageFolderDataModule(root=str(roots["folder"]), img_size=32, batch_size=3, num_workers=0, decode="auto")
    dm.setup()  # no trainer yet (fine-tuning's augmentation, the feature cache): the workers decode
    assert not dm.on_device()
    assert dm.collate_fn(dm.split_dataset("train", True)) is disk_images.collate_readable
    device = ImageFolderDataModule(root=str(roots["folder"]), img_size=32, batch_size=3, num_workers=0, decode="device")
    device.setup()
    assert device.on_device() and device.collate_fn(device.eval_dataset("val", [1])) is jpeg_decode.collate_encoded


# --- the callers use the interface ------------------------------------------------------------------------
def test_feature_cache_reads_the_evaluation_view():
    dm = Toy(eval_batch_size=3)
    pixel = lambda images: images.flatten(1)[:, :1]  # noqa: E731  the feature is the image's index
    full = FeatureDataModule.from_images(dm, pixel, CPU, limits={})
    assert full.splits["train"][0][:, 0].tolist() == list(range(10))  # un-augmented (no +1000), in order
    assert full.splits["val"][1].tolist() == [i % 3 for i in range(7)]
    limited = FeatureDataModule.from_images(
        dm, pixel, CPU, seed=5, limits={"limit_train_batches": 1, "limit_val_batches": 1, "limit_test_batches": 1}
    )
    assert limited.splits["train"][0][:, 0].tolist() == subset_indices(10, 4, 5)
    assert limited.splits["val"][0][:, 0].tolist() == [0, 1, 2]
    assert isinstance(full, SemmaeDataModule) and full.split_size("train") == 10
    assert len(list(full.eval_batches("val"))) == 3  # the cache answers the interface too


def test_feature_cache_refuses_what_is_not_a_semmae_datamodule():
    import lightning as L

    with pytest.raises(ConfigError, match="feature_cache=false"):
        FeatureDataModule.from_images(L.LightningDataModule(), lambda x: x, CPU, limits={})


def test_finetune_augmentation_is_set_through_the_interface(roots):
    dm = Toy()
    previous = dm.train_augmentation
    what = FinetuneAugment(re_prob=0.5).apply(dm)
    assert isinstance(dm.augmentation, BatchRandomErasing) and dm.augmentation.augment is previous
    assert "random erasing p=0.5" in what
    with pytest.raises(ConfigError, match="decode=workers"):
        FinetuneAugment().apply(BUILDERS["imagefolder_device"](roots))
    with pytest.raises(ConfigError, match="cannot be replaced"):
        FinetuneAugment().apply(BUILDERS["ade20k"](roots))
    workers = BUILDERS["fashion_mnist_workers"](roots)
    assert "needs dataset.resident=true; not applied" in FinetuneAugment(re_prob=0.5).apply(workers)


def test_masks_reads_the_evaluation_view():
    from semmae.cli.masks import validation_batch

    batch = validation_batch(Toy(eval_batch_size=4), 6)
    assert pixel_ids([batch]) == list(range(6)) and batch["label"].tolist() == [i % 3 for i in range(6)]


def test_analyze_reads_the_evaluation_view():
    from semmae.cli.analyze import ValImages

    cfg = OmegaConf.create({"dataset": {"_target_": f"{__name__}.Toy"}, "batch_size": 4, "num_images": 9})
    batches = list(ValImages(cfg).batches(8, 3))
    assert [len(b) for b in batches] == [4, 3] and batches[0].shape[1:] == (3, 8, 8)  # val has 7 images
    assert pixel_ids([{"image": torch.cat(batches)}]) == list(range(7))


def test_linprobe_asks_the_datamodule_whether_it_is_in_memory(compose_cfg, fmnist_root, monkeypatch):
    from semmae.cli.linprobe import run
    from tests.tasks.test_linprobe import TINY

    monkeypatch.setattr(FashionMNISTDataModule, "in_memory", property(lambda self: False))
    cfg = compose_cfg("linprobe", ["debug=fast_dev_run", f"dataset.root={fmnist_root}", "ckpt=null", *TINY])
    run(cfg)
    assert json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["feature_cache"] is False
