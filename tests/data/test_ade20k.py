"""ADE20K on a fixture tree in the release layout (ADEChallengeData2016/images|annotations/training|validation),
written by the test: label shift, ignore index, the training and validation pipelines, loaders, errors."""

from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from semmae.data.ade20k import (
    CLASSES,
    ADE20KDataModule,
    fit_scale,
    photometric_distortion,
    random_crop,
    reduce_zero_label,
)
from semmae.errors import ConfigError, DataError


def annotation(h: int, w: int, seed: int) -> torch.Tensor:
    """uint8 [1, h, w]: four quadrants of classes 0 (other), 1, 150 and a seed-dependent class."""
    a = torch.zeros(1, h, w, dtype=torch.uint8)
    a[:, : h // 2, w // 2 :] = 1
    a[:, h // 2 :, : w // 2] = 150
    a[:, h // 2 :, w // 2 :] = 2 + seed
    return a


def write_ade20k(root: Path, n_train: int = 4, n_val: int = 2, size=(40, 60)) -> Path:
    root = root / "ADEChallengeData2016"
    for split, n in (("training", n_train), ("validation", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        prefix = "train" if split == "training" else "val"
        for i in range(n):
            stem = f"ADE_{prefix}_{i + 1:08d}"
            g = torch.Generator().manual_seed(i)
            image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
            write_jpeg(image, str(root / "images" / split / f"{stem}.jpg"))
            write_png(annotation(*size, seed=i), str(root / "annotations" / split / f"{stem}.png"))
    return root


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    return write_ade20k(tmp_path_factory.mktemp("ade"))


def small(root, **kwargs):
    """ADE's pipeline scaled down: (128, 32) instead of (2048, 512), 24-pixel crops."""
    return ADE20KDataModule(root=str(root), crop_size=24, scale=(128, 32), batch_size=2, num_workers=0, **kwargs)


def test_there_are_150_classes():
    assert len(CLASSES) == 150 and len(set(CLASSES)) == 150 and CLASSES[0] == "wall" and CLASSES[-1] == "flag"


def test_reduce_zero_label():
    a = torch.tensor([[0, 1, 2], [150, 255, 37]], dtype=torch.uint8)
    assert reduce_zero_label(a).tolist() == [[255, 0, 1], [149, 255, 36]]


def test_fit_scale_keeps_the_aspect_ratio_inside_both_edges():
    assert fit_scale(400, 600, (2048, 512)) == pytest.approx(512 / 400)  # short edge binds
    assert fit_scale(100, 1000, (2048, 512)) == pytest.approx(2.048)  # long edge binds


def test_validation_items_keep_full_resolution_labels_shifted(ade_root):
    dm = small(ade_root)
    dm.setup()
    item = dm.datasets["val"][1]
    assert item["image"].shape == (3, 32, 48)  # 40x60 rescaled by min(128/60, 32/40) = 0.8
    expected = reduce_zero_label(annotation(40, 60, seed=1)[0])
    assert torch.equal(item["mask"], expected)
    assert set(item["mask"].unique().tolist()) == {255, 0, 149, 2}  # other -> ignore, 1 -> 0, 150 -> 149, 3 -> 2


def test_training_items_are_cropped_padded_and_labels_shifted(ade_root):
    torch.manual_seed(0)
    dm = small(ade_root, ratio_range=(0.5, 0.5))  # 40x60 -> 16x24 (scale (64, 16)): smaller than the 24 crop
    dm.setup()
    item = dm.datasets["train"][0]
    image, mask = item["image"], item["mask"]
    assert image.shape == (3, 24, 24) and mask.shape == (24, 24) and mask.dtype == torch.int64
    assert torch.all(mask[16:] == 255) and torch.all(image[:, 16:] == 0)  # padding: ignore / zero
    assert set(mask[:16].unique().tolist()) <= {255, 0, 149, 1}
    assert {0, 149, 1} <= set(mask[:16].unique().tolist())


def test_random_crop_avoids_crops_dominated_by_one_class():
    label = torch.zeros(100, 100, dtype=torch.long)
    label[:, 50:] = 1  # a 20-wide crop is mixed enough only for x in 36..64 (about a third of the positions)
    torch.manual_seed(0)
    for _ in range(20):
        y, x = random_crop(label, 20, cat_max_ratio=0.75, tries=50)
        share = (label[y : y + 20, x : x + 20] == 1).float().mean()
        assert 0.25 < share < 0.75
    y, x = random_crop(torch.zeros(30, 30, dtype=torch.long), 20, cat_max_ratio=0.75)  # impossible: any crop
    assert 0 <= y <= 10 and 0 <= x <= 10


def test_photometric_distortion_stays_in_range_and_changes_images():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    outs = [photometric_distortion(image) for _ in range(8)]
    assert all(o.shape == (3, 16, 16) and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert any(not torch.allclose(o, image.float() / 255) for o in outs)


def test_loaders(ade_root):
    dm = small(ade_root)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 24, 24) and batch["mask"].shape == (2, 24, 24)
    val = list(dm.val_dataloader())
    assert len(val) == 2 and val[0]["image"].shape == (1, 3, 32, 48) and val[0]["mask"].shape == (1, 40, 60)


def test_subsets(ade_root):
    dm = small(ade_root, train_subset=3, val_subset=1)
    dm.setup()
    assert len(dm.datasets["train"]) == 3 and len(dm.datasets["val"]) == 1


def test_errors_name_the_fix(ade_root, tmp_path):
    with pytest.raises(ConfigError, match="dataset.root"):
        ADE20KDataModule(root=None)
    with pytest.raises(DataError, match="ADEChallengeData2016"):
        small(tmp_path).prepare_data()
    broken = write_ade20k(tmp_path / "broken", n_train=2, n_val=1)
    next((broken / "annotations" / "training").glob("*.png")).unlink()
    with pytest.raises(DataError, match="no annotation"):
        small(broken).prepare_data()
