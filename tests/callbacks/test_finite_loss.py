"""A diverged run stops at its first non-finite loss with one line (exit code 3), and no checkpoint written after
it: last.ckpt stays the last finite one."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from semmae.callbacks.finite_loss import FiniteLoss
from semmae.errors import DivergedError
from semmae.utils.checkpoint_io import AtomicCheckpointIO

REPO = Path(__file__).resolve().parents[2]


class BlowsUp(L.LightningModule):
    """A linear model whose loss turns NaN from optimiser step `bad_step` on (its weights do too)."""

    def __init__(self, bad_step: int):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.bad_step = bad_step
        self.optim_cfg = {"blr": 1.5e-4}

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        if self.global_step + 1 >= self.bad_step:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def train(tmp_path, bad_step, check_every=1):
    data = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True, save_top_k=-1)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[ckpt, FiniteLoss(check_every)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
    )
    with pytest.raises(DivergedError) as err:
        trainer.fit(BlowsUp(bad_step), data)
    return str(err.value)


@pytest.mark.parametrize("check_every", [1, 4])
def test_the_run_stops_at_the_first_bad_step_and_keeps_the_last_finite_checkpoint(tmp_path, check_every):
    message = train(tmp_path, bad_step=7, check_every=check_every)
    assert "the loss is nan at step 7" in message and "model.optim.blr (now 0.00015)" in message, message
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6  # written before step 7, never after
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert str(tmp_path / "last.ckpt") in message


def test_a_divergence_before_any_checkpoint_says_so(tmp_path):
    assert "no checkpoint had been written yet" in train(tmp_path, bad_step=1)
    assert not list(tmp_path.glob("*.ckpt"))


def test_the_cli_exits_3_with_one_line(tmp_path, fmnist_root):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "semmae.pretrain",
            "logger=none",
            "callbacks=none",
            f"dataset.root={fmnist_root}",
            "model.optim.blr=1e3",
            "dataset.train_subset=256",
            "dataset.batch_size=32",
            "trainer.max_epochs=1",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith("semmae-pretrain: error: training diverged: the loss is")
    assert "model.optim.blr (now 1000)" in errors[0]
    assert not (tmp_path / "run" / "results.json").exists()
    assert "training diverged" in (tmp_path / "run" / "failed.json").read_text()
