"""`make pretrain`'s ending: the k-NN top-1 of the trained encoder next to that of the encoder it started from, on
the same images; switchable."""

import json
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

from semmae.cli.pretrain import knn_check, run
from semmae.models.loading import random_encoder
from tests.tasks.test_pretrain import TINY

KNN = ["knn_eval.train_images=200", "knn_eval.val_images=100", "knn_eval.neighbours=5"]


def test_pretraining_ends_with_both_knn_accuracies(compose_cfg, fmnist_root, capsys):
    cfg = compose_cfg("pretrain", ["debug=fast_dev_run", f"dataset.root={fmnist_root}", *TINY, *KNN])
    metrics = run(cfg)
    assert 0.0 <= metrics["knn/top1"] <= 1.0 and 0.0 <= metrics["knn/random_init_top1"] <= 1.0
    assert (metrics["knn/train_images"], metrics["knn/val_images"]) == (64, 64)  # a fast dev run: one batch each
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["metrics"]["knn/top1"] == metrics["knn/top1"]
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("k-NN top-1 (k=5)"))
    assert f"{100 * metrics['knn/top1']:.2f}% (random init: {100 * metrics['knn/random_init_top1']:.2f}%" in line


def test_the_random_encoder_is_the_one_the_run_started_from(compose_cfg, fmnist_root):
    cfg = compose_cfg("pretrain", [f"dataset.root={fmnist_root}", *TINY])
    L.seed_everything(cfg.seed, verbose=False)
    instantiate(cfg.dataset)
    start = instantiate(cfg.model).mae.encoder
    twin = random_encoder({**cfg.backbone, **start.config}, seed=cfg.seed)
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), twin.state_dict().values()))


def test_an_untrained_model_scores_as_its_initialisation_and_the_check_switches_off(compose_cfg, fmnist_root):
    cfg = compose_cfg("pretrain", [f"dataset.root={fmnist_root}", *TINY, *KNN])
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    out = knn_check(cfg, model, datamodule)
    assert out["knn/top1"] == out["knn/random_init_top1"]  # the untrained model is its own initialisation
    disabled = compose_cfg("pretrain", [f"dataset.root={fmnist_root}", *TINY, "knn_eval.enabled=false"])
    assert knn_check(disabled, model, datamodule) == {}


def test_fewer_training_images_than_neighbours_leave_the_check_out_not_the_run(compose_cfg, fmnist_root, capsys):
    overrides = ["debug=fast_dev_run", f"dataset.root={fmnist_root}", *TINY, "dataset.eval_batch_size=16"]
    metrics = run(compose_cfg("pretrain", overrides))  # a fast dev run reads one batch of 16: k = 20 cannot vote
    assert "knn/top1" not in metrics
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("k-NN top-1"))
    assert line.endswith("(not measured: 16 training images, fewer than knn_eval.neighbours=20)")
