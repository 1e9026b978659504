import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from semmae.data.augment import BatchEvalTransform, BatchTrainAugment, crop_resize, sample_crop_boxes


def test_whole_image_box_is_identity():
    x = torch.rand(2, 3, 16, 16)
    boxes = torch.tensor([[0, 0, 16, 16]] * 2, dtype=torch.float32)
    assert torch.allclose(crop_resize(x, boxes, 16), x, atol=1e-5)


def test_same_size_crop_is_exact_and_flip_mirrors():
    x = torch.rand(1, 1, 20, 20)
    box = torch.tensor([[3.0, 5.0, 8.0, 8.0]])
    out = crop_resize(x, box, 8)
    assert torch.allclose(out, x[:, :, 5:13, 3:11], atol=1e-5)
    flipped = crop_resize(x, box, 8, flip=torch.tensor([True]))
    assert torch.allclose(flipped, out.flip(-1), atol=1e-5)


def test_matches_torchvision_resized_crop_inside_the_crop():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32) * 255
    # downscale by 2: every output pixel averages a 2x2 block, exactly torchvision's bilinear (no antialias)
    ours = crop_resize(x, torch.tensor([[4.0, 2.0, 24.0, 24.0]]), 12)
    ref = TF.resized_crop(x, top=2, left=4, height=24, width=24, size=[12, 12], antialias=False)
    assert torch.allclose(ours, ref, atol=1e-3)
    # upscale: equal away from the crop border (torchvision clamps at the crop edge, we sample the image)
    ours = crop_resize(x, torch.tensor([[6.0, 6.0, 10.0, 10.0]]), 20)
    ref = TF.resized_crop(x, top=6, left=6, height=10, width=10, size=[20, 20], antialias=False)
    assert torch.allclose(ours[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-3)


def test_boxes_in_bounds_and_scale_distribution_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    n, h, w = 20000, 32, 32
    boxes = sample_crop_boxes(n, h, w, (0.2, 1.0), (3 / 4, 4 / 3), g)
    x0, y0, bw, bh = boxes.unbind(1)
    assert torch.all(x0 >= 0) and torch.all(y0 >= 0) and torch.all(x0 + bw <= w) and torch.all(y0 + bh <= h)
    ours = (bw * bh / (h * w)).numpy()
    torch.manual_seed(0)
    ref = []
    img = torch.zeros(1, h, w)
    for _ in range(4000):
        i, j, hh, ww = (
            v2.RandomResizedCrop.get_params(img, scale=[0.2, 1.0], ratio=[3 / 4, 4 / 3])
            if hasattr(v2.RandomResizedCrop, "get_params")
            else (0, 0, h, w)
        )
        ref.append(hh * ww / (h * w))
    ref = torch.tensor(ref)
    assert abs(ours.mean() - ref.mean().item()) < 0.02
    assert abs(ours.std() - ref.std().item()) < 0.02
    assert ours.min() >= 0.15 and ours.max() <= 1.0
    aspect = (bw / bh).numpy()
    assert 0.6 < aspect.min() and aspect.max() < 1.6


def test_train_augment_outputs_normalised_batch():
    aug = BatchTrainAugment(32, mean=(0.5,), std=(0.25,), channels=1)
    x = torch.full((8, 1, 32, 32), 255, dtype=torch.uint8)
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 32, 32)
    assert torch.allclose(out, torch.full_like(out, 2.0), atol=1e-4)  # (1 - 0.5) / 0.25


def test_eval_transform_resizes_and_normalises():
    t = BatchEvalTransform(16, mean=(0.0,), std=(1.0,), channels=3)
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    out = t(x)
    assert out.shape == (2, 3, 16, 16) and float(out.max()) <= 1.0 + 1e-6
    assert math.isclose(float(out.mean()), float(x.float().mean() / 255), rel_tol=0.05)


@pytest.mark.parametrize("ratio_bounds", [(3 / 4, 4 / 3)])
def test_fallback_is_centre_crop(ratio_bounds):
    boxes = sample_crop_boxes(16, 10, 40, (0.99, 1.0), ratio_bounds, torch.Generator().manual_seed(0))
    # a 10x40 image cannot hold 99% of its area at aspect <= 4/3: torchvision falls back to a centred crop
    assert torch.all(boxes[:, 3] == 10) and torch.all(boxes[:, 2] == round(10 * 4 / 3))
    assert torch.all(boxes[:, 0] == (40 - round(10 * 4 / 3)) // 2)


def test_label_maps_follow_the_same_crop_and_flip():
    """A label map equal to the image's pixel values must come out equal to the (nearest-sampled) image."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 7, (6, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2)  # 8x8-pixel blocks
    images = ids[:, None].to(torch.uint8) * 30
    aug = BatchTrainAugment(16, mean=(0.0,), std=(1.0 / 255,), channels=1)
    out, maps = aug(images, g, label_maps=ids)
    assert maps.dtype == ids.dtype and maps.shape == (6, 16, 16)
    assert set(maps.unique().tolist()) <= set(range(7))
    # inside the blocks the bilinear image is exactly 30 x label: there the warped label must agree with it
    flat = out[:, 0] % 30 == 0
    assert flat.float().mean() > 0.3
    assert torch.equal(maps[flat], (out[:, 0][flat] / 30).round().long())
    ev = BatchEvalTransform(16, mean=(0.0,), std=(1.0,), channels=1)
    _, emaps = ev(images, label_maps=ids)
    assert emaps.shape == (6, 16, 16) and torch.equal(emaps, ids[:, ::2, ::2])
