"""semmae-linprobe's probes end to end on the fixture Fashion-MNIST: EP, MHCA and k-NN heads, several at once with a
random-init baseline, the layer-wise sweep, low-shot seeds, and the bad input that must be one line and exit 2."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from semmae.cli.linprobe import run
from semmae.data.low_shot import class_balanced_subset
from tests.tasks.test_linprobe import TINY

REPO = Path(__file__).resolve().parents[2]
QUIET = ["logger=none", "callbacks=none"]


def results(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())


def test_ep_learns_the_fixture_and_draws_its_attention(compose_cfg, fmnist_root):
    cfg = compose_cfg(
        "linprobe",
        [
            f"dataset.root={fmnist_root}",
            "ckpt=null",
            *TINY,
            "logger=csv",
            "callbacks=none",
            "model.head=ep",
            "model.ep.num_queries=4",
            "trainer.max_epochs=8",
            "model.optim.blr=25.6",
            "model.optim.warmup_epochs=1",
        ],
    )
    metrics = run(cfg)
    assert metrics["test/top1"] > 0.6, metrics  # chance is 0.1: the class sits in where the blob is
    out = results(cfg)
    assert out["probes"][0]["head"] == "ep" and out["feature_cache"] is True
    assert (Path(cfg.paths.output_dir) / "figures" / "ep_attention.png").stat().st_size > 1000


def test_knn_trains_nothing_and_reports_every_k(compose_cfg, fmnist_root):
    cfg = compose_cfg("linprobe", [f"dataset.root={fmnist_root}", "ckpt=null", *TINY, *QUIET, "model.head=knn"])
    metrics = run(cfg)
    assert metrics["test/top1"] == metrics["test/top1_k20"] and {"test/top1_k10", "test/top1_k50"} <= set(metrics)
    assert metrics["test/top1"] > 0.5
    out = results(cfg)
    assert out["epochs"] is None and out["probes"][0]["run_dir"] is None


def test_heads_side_by_side_with_the_random_baseline(compose_cfg, fmnist_root, capsys):
    cfg = compose_cfg(
        "linprobe",
        [
            "debug=fast_dev_run",
            f"dataset.root={fmnist_root}",
            "ckpt=null",
            *TINY,
            "model.head=[linear,ep,mhca,knn]",
            "model.ep.num_queries=8",
            "random_baseline=true",
        ],
    )
    metrics = run(cfg)
    for encoder in ("checkpoint", "random_init"):
        for head in ("linear", "ep", "mhca", "knn"):
            assert 0.0 <= metrics[f"{encoder}/{head}/test/top1"] <= 1.0
            assert (Path(cfg.paths.output_dir) / "probes" / f"{encoder}-{head}").is_dir() or head == "knn"
    out = results(cfg)
    assert [(p["encoder"], p["head"]) for p in out["probes"]] == [
        (e, h) for e in ("checkpoint", "random_init") for h in ("linear", "ep", "mhca", "knn")
    ]
    table = capsys.readouterr().out
    assert "probe (test top-1 %)" in table and "random init" in table and "k-NN (k=20)" in table


def test_streamed_images_train_the_heads_and_knn_caches_only_pooled_features(compose_cfg, fmnist_root, caplog):
    caplog.set_level(logging.INFO)
    cfg = compose_cfg(
        "linprobe",
        [
            "debug=fast_dev_run",
            f"dataset.root={fmnist_root}",
            "ckpt=null",
            *TINY,
            "model.feature_cache=false",
            "model.head=[ep,knn]",
            "model.ep.num_queries=8",
        ],
    )
    metrics = run(cfg)
    assert 0.0 <= metrics["ep/test/top1"] <= 1.0 and 0.0 <= metrics["knn/test/top1"] <= 1.0
    assert results(cfg)["feature_cache"] is False
    cached = [r.message for r in caplog.records if r.message.startswith("Feature cache: ") and "images" in r.message]
    assert len(cached) == 1 and "pooled/2:" in cached[0] and "tokens" not in cached[0]


def test_layerwise_sweep_reads_each_block(compose_cfg, fmnist_root):
    cfg = compose_cfg(
        "linprobe",
        [
            f"dataset.root={fmnist_root}",
            "ckpt=null",
            *TINY,
            *QUIET,
            "model.head=knn",
            "model.block=all",
            "model.bf16=false",
        ],
    )
    metrics = run(cfg)
    assert {"block1/test/top1", "block2/test/top1"} <= set(metrics)
    # block 1's k-NN is that of block 1's CLS token, computed here directly
    from semmae.analysis.knn import knn_accuracy
    from semmae.models.block_tokens import block_tokens

    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    encoder = instantiate(cfg.model.encoder).eval()
    feats = {}
    with torch.no_grad():
        for split in ("train", "val"):
            images, labels = datamodule.data[split]
            feats[split] = (block_tokens(encoder, datamodule.eval_transform(images), [1])[1][:, 0], labels)
    acc = knn_accuracy(*feats["train"], *feats["val"], 10, ks=[20])
    assert metrics["block1/test/top1"] == pytest.approx(acc[20]["top1"], abs=1 / 300)


def test_low_shot_seeds_draw_balanced_subsets_and_report_the_spread(compose_cfg, fmnist_root):
    cfg = compose_cfg(
        "linprobe",
        [
            f"dataset.root={fmnist_root}",
            "ckpt=null",
            *TINY,
            *QUIET,
            "model.head=[linear,knn]",
            "model.knn.neighbours=[5]",
            "dataset.train_per_class=5",
            "probe_seeds=[0,1,2]",
            "trainer.max_epochs=2",
        ],
    )
    metrics = run(cfg)
    for head in ("linear", "knn"):
        assert metrics[f"{head}/seeds"] == 3 and f"{head}/test/top1_std" in metrics
        tops = [p["metrics"]["test/top1"] for p in results(cfg)["probes"] if p["head"] == head]
        assert metrics[f"{head}/test/top1"] == pytest.approx(sum(tops) / 3)
    datamodule = instantiate(cfg.dataset, seed=1)
    datamodule.setup()
    labels = datamodule.data["train"][1]
    assert torch.bincount(labels, minlength=10).tolist() == [5] * 10  # the seed-1 run's training split
    full = instantiate(cfg.dataset, train_per_class=None)
    full.setup()
    idx = class_balanced_subset(full.data["train"][1], 5, seed=1)
    assert torch.equal(full.data["train"][1][idx], labels)


def run_cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "semmae.linprobe", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["model.block=7"], "model.block=7: the encoder has blocks 1 to 2"),
        (["dataset.train_per_class=1000"], "is more than the"),
        (["model.head=attentive"], "model.head='attentive' is not a probe"),
        (["model.head=ep", "model.cache_max_ram_share=0.000001"], "the feature cache needs"),
        (  # found before anything is encoded or trained
            ["model.head=[linear,knn]", "dataset.train_per_class=1"],
            "model.knn.neighbours=50 is more than the 10 training images: choose ks of at most 10, "
            "e.g. model.knn.neighbours=[10]",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, fmnist_root, args, needle):
    proc = run_cli([f"dataset.root={fmnist_root}", "ckpt=null", *TINY, "logger=none", *args], tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("semmae-linprobe: error: ") and needle in lines[0], lines[0]
