"""fashion_mnist_seg: the threshold rule on hand-made images, and batches from the fixture IDX files."""

import torch

from semmae.data.fashion_mnist_seg import FashionMNISTSegDataModule, garment_masks


def test_threshold_rule_on_a_hand_made_image():
    img = torch.zeros(1, 1, 12, 12, dtype=torch.uint8)
    img[0, 0, 2:8, 2:8] = 200
    img[0, 0, 4, 4] = 0  # a pinhole inside the garment: closed by the blur (200 * 12/16 = 150 > 20)
    img[0, 0, 10, 10] = 60  # a faint isolated speck: 60 * 4/16 = 15 <= 20, background
    masks = garment_masks(img, torch.tensor([3]), threshold=20)
    assert masks.dtype == torch.uint8 and masks.shape == (1, 12, 12)
    assert masks[0, 4, 4] == 4 and masks[0, 10, 10] == 0
    assert torch.all(masks[0, 2:8, 2:8] == 4)
    # the blurred edge: one pixel outside the block gets 200 * 4/16 = 50 (> 20, in), two pixels out 0 (out)
    assert masks[0, 5, 1] == 4 and masks[0, 5, 0] == 0
    assert set(masks.unique().tolist()) == {0, 4}


def dm_for(root, **kwargs):
    kwargs = {"root": str(root), "download": False, "batch_size": 16, "eval_batch_size": 32, "seed": 0, **kwargs}
    dm = FashionMNISTSegDataModule(**kwargs)
    dm.setup()
    return dm


def test_label_maps_follow_the_garment_class(fmnist_root):
    dm = dm_for(fmnist_root)
    images, labels = dm.data["val"]
    masks = dm.masks["val"]
    assert masks.shape == (len(labels), 32, 32)
    fg = masks > 0
    assert torch.equal(masks[fg], (labels[:, None, None].expand_as(masks) + 1)[fg].to(torch.uint8))
    assert dm.num_classes == 11 and dm.classes[0] == "background" and len(dm.classes) == 11


def test_training_batches_warp_images_and_maps_together(fmnist_root):
    dm = dm_for(fmnist_root)
    raw = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    batch = dm.augment_batch(raw, train=True)
    image, mask = batch["image"], batch["mask"]
    assert image.shape == (16, 1, 32, 32) and mask.shape == (16, 32, 32) and mask.dtype == torch.int64
    assert "image_plain" in batch and batch["label"].shape == (16,)
    fg = mask > 0
    assert torch.all((mask[fg] - 1) == batch["label"][:, None, None].expand_as(mask)[fg])


def test_a_flipped_image_gets_the_flipped_map(fmnist_root):
    dm = dm_for(fmnist_root, crop_scale=(1.0, 1.0))  # whole-image crops: only the flip remains
    raw = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    batch = dm.augment_batch(raw, train=True)
    pixels = (batch["image"] * dm.std[0] + dm.mean[0]) * 255
    flipped = 0
    for img, mask, raw_img, raw_mask in zip(pixels, batch["mask"], raw["image"].float(), raw["mask"].long()):
        if torch.allclose(img, raw_img, atol=1e-2):
            assert torch.equal(mask, raw_mask)
        else:
            assert torch.allclose(img, raw_img.flip(-1), atol=1e-2)
            assert torch.equal(mask, raw_mask.flip(-1))
            flipped += 1
    assert 0 < flipped < len(pixels)


def test_evaluation_batches_are_unchanged_and_padding_is_ignored(fmnist_root):
    dm = dm_for(fmnist_root)
    raw = next(iter(dm.val_dataloader()))
    raw["valid"][-3:] = False
    batch = dm.augment_batch(raw, train=False)
    assert torch.equal(batch["mask"][:-3], raw["mask"][:-3].long())
    assert torch.all(batch["mask"][-3:] == 255)
