"""semantic_features (docs/masking.md#semantic_features): regions from k-means on the encoder's patch features, which
the pretraining task passes as batch["features"]; random masking during the warm-up."""

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from semmae.errors import DataError
from semmae.masking import RandomMasking, SemanticFeaturesMasking
from semmae.masking.components import count_components
from tests.tasks.test_pretrain import TINY


def halves(b: int, dim: int = 6) -> torch.Tensor:
    """Features [B, 64, dim] of an 8x8 grid: one vector on the left half, another on the right."""
    cols = torch.arange(64) % 8
    left = torch.zeros(dim)
    right = torch.zeros(dim)
    left[0], right[0] = 1.0, -1.0
    return torch.where((cols < 4)[:, None], left, right).expand(b, 64, dim).clone()


def test_the_warm_up_is_random_masking_and_needs_no_features():
    images = torch.randn(4, 1, 32, 32)
    strategy = SemanticFeaturesMasking(0.75, warmup=0.3)
    for progress in (0.0, 0.29):
        m = strategy(images, (8, 8), torch.Generator().manual_seed(5), {"image": images, "progress": progress})
        ref = RandomMasking(0.75)(images, (8, 8), torch.Generator().manual_seed(5))
        assert torch.equal(m.mask, ref.mask) and torch.equal(m.ids_keep, ref.ids_keep)
    assert not strategy.needs_features(0.29) and strategy.needs_features(0.3) and strategy.needs_features(1.0)


def test_after_the_warm_up_the_regions_follow_the_features_not_the_pixels():
    images = torch.zeros(8, 1, 32, 32)  # constant pixels: any structure must come from the features
    strategy = SemanticFeaturesMasking(0.75, warmup=0.0, num_regions=2, random_fraction=0.0, pos_weight=0.0)
    batch = {"image": images, "progress": 0.5, "features": halves(8)}
    regions = strategy.regions(images, (8, 8), torch.Generator().manual_seed(0), batch)
    cols = torch.arange(64) % 8
    assert torch.all(regions[:, cols < 4] == 0) and torch.all(regions[:, cols >= 4] == 4)  # the two halves
    m = strategy(images, (8, 8), torch.Generator().manual_seed(0), batch)
    visible = ~m.mask
    # 16 visible patches of one 32-patch half, grown from a seed: all in one half, one piece
    in_left = (visible & (cols < 4)).sum(1)
    assert torch.all((in_left == 16) | (in_left == 0))
    assert torch.all(count_components(visible, (8, 8)) == 1)
    # random masking would almost never keep one half
    r = RandomMasking(0.75)(images, (8, 8), torch.Generator().manual_seed(0))
    assert not torch.all(((~r.mask) & (cols < 4)).sum(1) % 16 == 0)


def test_missing_or_misshapen_features_are_one_line_data_errors():
    images = torch.randn(2, 1, 32, 32)
    strategy = SemanticFeaturesMasking(0.75, warmup=0.0)
    with pytest.raises(DataError, match=r"batch\['features'\].*has none"):
        strategy(images, (8, 8), torch.Generator().manual_seed(0), {"image": images})
    with pytest.raises(DataError, match=r"must be \[2, 64, D\]"):
        strategy(images, (8, 8), torch.Generator().manual_seed(0), {"image": images, "features": torch.randn(2, 63, 4)})


def fake_trainer(model, step: int, total: int = 10):
    model.trainer = SimpleNamespace(
        global_step=step, estimated_stepping_batches=total, global_rank=0, current_epoch=0, training=True
    )


def test_the_task_passes_the_encoders_patch_tokens_only_after_the_warm_up(compose_cfg):
    model = instantiate(
        compose_cfg(
            "pretrain", [*TINY, "masking=semantic_features", "masking.warmup=0.5", "model.probe.bf16=false"]
        ).model
    )
    images = torch.randn(3, 1, 32, 32)
    fake_trainer(model, step=4)
    batch, tokens = model.masking_inputs({"image": images})
    assert batch["progress"] == 0.4 and "features" not in batch and tokens is None  # warm-up: no forward at all
    fake_trainer(model, step=5)
    batch, tokens = model.masking_inputs({"image": images})
    with torch.no_grad():
        expected = model.mae.encoder.forward_features(images)
    npt = model.mae.encoder.num_prefix_tokens
    torch.testing.assert_close(batch["features"], expected[:, npt:])  # the full image's patch tokens, no prefix
    assert batch["features"].shape == (3, 64, model.mae.encoder.embed_dim) and not batch["features"].requires_grad
    torch.testing.assert_close(tokens[:, 0], expected[:, 0])  # the CLS token, for the online probe


def test_one_training_step_runs_one_full_image_forward_shared_with_the_probe(compose_cfg, monkeypatch):
    """After the warm-up the probe reads the CLS token of semantic_features' forward instead of running its own."""
    model = instantiate(compose_cfg("pretrain", [*TINY, "masking=semantic_features", "masking.warmup=0.0"]).model)
    calls = []
    forward = model.full_encoder
    model.full_encoder = lambda x: calls.append(x.shape[0]) or forward(x)
    fake_trainer(model, step=1)
    monkeypatch.setattr(type(model), "log", lambda *a, **k: None)
    monkeypatch.setattr(type(model), "optimizers", lambda self: SimpleNamespace(param_groups=[{"lr": 0.0}]))
    model.trainer.log_every_n_steps = 50
    batch = {"image": torch.randn(4, 1, 32, 32), "label": torch.tensor([0, 1, 2, 3])}
    loss = model.training_step(batch, 0)
    assert calls == [4] and torch.isfinite(loss)  # one forward over the whole batch, none for the probe
    model.masking = RandomMasking(0.75)  # other strategies: the probe's own forward on its share of the batch
    calls.clear()
    model.training_step(batch, 0)
    assert calls == [2]
