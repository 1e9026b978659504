"""The linear probe's feature cache encodes only what the run reads: a fast dev run one batch of each split."""

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from semmae.cli.linprobe import run
from semmae.data.feature_cache import FeatureDataModule, images_read
from semmae.data.loaders import subset_indices
from tests.tasks.test_linprobe import TINY

FMNIST_TRAIN, FMNIST_TEST = 60000, 10000


@pytest.mark.parametrize(
    "limits,train,val",
    [
        ({}, 60000, 10000),  # no limits: everything
        ({"fast_dev_run": True}, 256, 1024),  # one batch of each
        ({"fast_dev_run": 3}, 768, 3072),
        ({"limit_train_batches": 3, "limit_val_batches": 2}, 768, 10000),  # the test set is read in full
        ({"limit_train_batches": 3, "limit_val_batches": 2, "limit_test_batches": 5}, 768, 5120),
        ({"limit_train_batches": 0.5}, 117 * 256, 10000),  # int(234 x 0.5) batches
        ({"limit_train_batches": 1.0}, 60000, 10000),
        ({"max_steps": 10, "accumulate_grad_batches": 2}, 20 * 256, 10000),
        ({"fast_dev_run": True, "devices": 2, "num_nodes": 2}, 4 * 256, 4 * 1024),  # one batch per rank
        ({"fast_dev_run": True, "devices": "auto"}, 60000, 10000),  # unknown world size: everything
        ({"fast_dev_run": False, "overfit_batches": 2}, 60000, 10000),
    ],
)
def test_images_read(limits, train, val):
    assert images_read(limits, FMNIST_TRAIN, 256, train=True) == train
    assert images_read(limits, FMNIST_TEST, 1024, train=False) == val


def test_fast_dev_run_encodes_one_batch_of_each_split(compose_cfg, fmnist_root, monkeypatch):
    import semmae.cli.linprobe as cli

    encoded = []
    views = cli.probe_views

    def counting(encoder, images, *args, **kwargs):
        encoded.append(len(images))
        return views(encoder, images, *args, **kwargs)

    monkeypatch.setattr(cli, "probe_views", counting)
    cfg = compose_cfg("linprobe", ["debug=fast_dev_run", f"dataset.root={fmnist_root}", "ckpt=null", *TINY])
    metrics = run(cfg)
    assert sum(encoded) == 64 + 128  # dataset.batch_size + dataset.eval_batch_size, not 600 + 300
    assert 0.0 <= metrics["test/top1"] <= 1.0
    assert json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["feature_cache"] is True


def test_limited_cache_holds_the_same_features_as_the_full_one(compose_cfg, fmnist_root):
    cfg = compose_cfg(
        "linprobe",
        [
            f"dataset.root={fmnist_root}",
            "ckpt=null",
            "model.bf16=false",
            *TINY,
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
        ],
    )
    datamodule, model = instantiate(cfg.dataset), instantiate(cfg.model)
    assert model.cache_limits["limit_train_batches"] == 2 and model.cache_limits["limit_test_batches"] is None
    full = FeatureDataModule.from_images(datamodule, model.encode, torch.device("cpu"), limits={})
    limited = FeatureDataModule.from_images(
        datamodule, model.encode, torch.device("cpu"), limits={**model.cache_limits, "limit_test_batches": 1}
    )
    feats, labels = limited.splits["val"]  # the first eval batch, in order
    assert feats.shape == (128, 32) and torch.equal(labels, full.splits["val"][1][:128])
    assert torch.allclose(feats, full.splits["val"][0][:128], atol=1e-6)
    feats, labels = limited.splits["train"]  # two batches' worth: a fixed random subset
    idx = torch.tensor(subset_indices(600, 128, 0))
    assert torch.equal(labels, full.splits["train"][1][idx])
    assert torch.allclose(feats, full.splits["train"][0][idx], atol=1e-6)
    assert len(list(limited.train_dataloader())) == 2
    # by default the task's limits apply: limit_test_batches=null reads the whole test set
    default = FeatureDataModule.from_images(datamodule, model.encode, torch.device("cpu"))
    assert len(default.splits["train"][1]) == 128 and len(default.splits["val"][1]) == 300


def test_repeated_epochs_pass_over_every_sample_that_many_times():
    from semmae.data.resident import ResidentBatches

    labels = torch.arange(10)
    ds = ResidentBatches(labels.view(10, 1).float(), labels, batch_size=4, train=True, seed=3, repeat=3)
    seen = torch.cat([b["label"] for b in ds])
    assert len(ds) == 7 and len(seen) == 28  # 30 draws, the incomplete batch dropped
    assert torch.bincount(seen, minlength=10).max() <= 3 and torch.bincount(seen, minlength=10).sum() == 28
    assert ResidentBatches(labels.view(10, 1).float(), labels, 4, train=False, repeat=3).repeat == 1


def test_low_shot_runs_the_full_runs_steps(compose_cfg, fmnist_root):
    from semmae.cli.linprobe import low_shot_repeat

    cfg = compose_cfg("linprobe", [f"dataset.root={fmnist_root}", "ckpt=null", *TINY, "dataset.train_per_class=2"])
    datamodule = instantiate(cfg.dataset)
    assert datamodule.split_size("train") == 20 and datamodule.train_pool_size == 600
    assert low_shot_repeat(datamodule, batch=20) == 9  # 600 // 64 = 9 steps an epoch, of 20 images each
    full = instantiate(cfg.dataset, train_per_class=None)
    assert low_shot_repeat(full, batch=64) == 1
