"""Two-process DDP pretraining on CPU (gloo), launched the way a user launches it, as a one-job Hydra multirun in a
subprocess: ranks draw different masks and disjoint data, metrics are reduced over both ranks (and equal on both),
checkpoints and figures are written once, into the job's directory, and the lr follows the effective batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tasks.test_pretrain import TINY

REPO = Path(__file__).resolve().parents[2]
BATCH, VAL = 32, 299  # an odd validation set: rank 1 gets one padded (valid=False) sample


def gloo_available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


@pytest.mark.slow
@pytest.mark.skipif(not gloo_available(), reason="torch.distributed with the gloo backend is not available")
def test_two_process_cpu_ddp(fmnist_root, tmp_path):
    sweep = tmp_path / "multirun"
    cmd = [
        sys.executable,
        "-m",
        "semmae.pretrain",
        "-m",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"dataset.root={fmnist_root}",
        *TINY,
        f"dataset.batch_size={BATCH}",
        f"dataset.val_subset={VAL}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "logger=csv",
        "callbacks.reconstruction.num_images=2",
        "+callbacks.record._target_=tests.tasks.ddp_record.RecordRank",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    except OSError as exc:  # the platform cannot start processes
        pytest.skip(f"cannot spawn processes: {exc}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    job = sweep / "0"
    ranks = [json.loads((job / f"ddp_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)

    # masks differ per rank (the generator is seeded with the rank)
    assert ranks[0]["first_mask"] != ranks[1]["first_mask"]
    # each rank trains on its own share: no DistributedSampler on top of ResidentBatches' sharding
    a, b = (set(r["train_indices"]) for r in ranks)
    assert len(a) == len(b) == 3 * BATCH and not a & b
    assert all(r["sampler"] != "DistributedSampler" for r in ranks)
    # the validation split covers the set once; the short rank pads, and padded samples are not counted
    assert ranks[0]["valid"] + ranks[1]["valid"] == VAL and [r["padded"] for r in ranks] == [0, 1]
    assert sum(r["local"]["seen"] for r in ranks) == VAL

    # metrics: equal on both ranks, and equal to the reduction of both ranks' sums
    for key in ("val/loss", "val/online_probe_acc", "train/loss_epoch"):
        assert ranks[0]["metrics"][key] == pytest.approx(ranks[1]["metrics"][key], rel=1e-6), key
    loss = sum(r["local"]["loss_sum"] for r in ranks) / sum(r["local"]["loss_weight"] for r in ranks)
    acc = sum(r["local"]["correct"] for r in ranks) / VAL
    assert ranks[0]["metrics"]["val/loss"] == pytest.approx(loss, rel=1e-5)
    assert ranks[0]["metrics"]["val/online_probe_acc"] == pytest.approx(acc, abs=1e-6)
    local_losses = [r["local"]["loss_sum"] / r["local"]["loss_weight"] for r in ranks]
    assert local_losses[0] != pytest.approx(local_losses[1], rel=1e-6)  # so the equality above says something

    # lr scaling follows the effective batch (per-device batch x 2 processes)
    assert all(r["effective_batch"] == 2 * BATCH for r in ranks)
    assert all(r["lr"] == pytest.approx(1.5e-4 * 2 * BATCH / 256) for r in ranks)

    # written once, by rank 0, into the job's directory; rank 1 started nothing of its own
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert [p.name for p in (job / "figures").iterdir()] == ["reconstruction_epoch000.png"]
    assert sorted(p.name for p in sweep.iterdir()) == [".semmae.lock", "0", "multirun.yaml"]  # the sweep's lock
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").joinpath("1").exists()
    assert not (job / "failed.json").exists()
    results = json.loads((job / "results.json").read_text())
    assert results["global_step"] == 3 and results["metrics"]["val/loss"] == pytest.approx(loss, rel=1e-5)
    ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["effective_batch"] == 2 * BATCH
    assert (job / "train_ddp_process_1.log").exists()  # rank 1 ran as this job, in this job's directory
