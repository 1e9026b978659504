"""Resuming pretraining from a mid-epoch or an end-of-epoch checkpoint continues exactly as the uninterrupted run:
the same batches, crops, masks and losses, and the same epoch means."""

import csv

import lightning as L
import pytest
import torch

from semmae.cli.pretrain import run
from tests.tasks.test_pretrain import TINY


class Killed(RuntimeError):
    pass


class SaveAndDie(L.Callback):
    """Saves a checkpoint at the end of training step `step` (as the requeue callback does) and stops the run there."""

    def __init__(self, step: int, path: str):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise Killed(f"killed after step {self.step}")


def logged(run_dir, key="train/loss_epoch"):
    """-> ({step: train/loss}, {epoch: key}) from the run's CSV log."""
    rows = list(csv.DictReader(open(next((run_dir / "csv").rglob("metrics.csv")))))
    steps = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    epochs = {int(r["epoch"]): float(r[key]) for r in rows if r.get(key)}
    return steps, epochs


@pytest.fixture(scope="module")
def common(fmnist_root):
    return [
        f"dataset.root={fmnist_root}",
        *TINY,
        "logger=csv",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "callbacks.reconstruction.num_images=2",
        "callbacks.progress_bar.refresh_rate=0",
    ]


@pytest.fixture(scope="module")
def uninterrupted(common, tmp_path_factory):
    from tests.conftest import compose

    out = tmp_path_factory.mktemp("uninterrupted")
    run(compose("pretrain", common, out))
    return out, *logged(out)


def test_resume_mid_epoch_continues_exactly(common, uninterrupted, compose_cfg, tmp_path):
    _, steps, epochs = uninterrupted
    ckpt = tmp_path / "step2.ckpt"
    with pytest.raises(Killed):
        run(
            compose_cfg(
                "pretrain",
                [
                    *common,
                    f"+callbacks.die._target_={__name__}.SaveAndDie",
                    "+callbacks.die.step=2",
                    f"+callbacks.die.path={ckpt}",
                ],
                tmp_path / "killed",
            )
        )
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2 and float(saved["train_metrics"]["train_loss"]["weight"]) == 2.0
    run(compose_cfg("pretrain", [*common, f"ckpt_path={ckpt}"], tmp_path / "resumed"))
    resumed_steps, resumed_epochs = logged(tmp_path / "resumed")
    assert sorted(resumed_steps) == sorted(steps)[2:] and len(steps) == 8
    for step, loss in resumed_steps.items():  # the same batches, crops and masks: the same losses
        assert loss == pytest.approx(steps[step], rel=1e-6, abs=1e-7), step
    # the interrupted epoch's mean counts its first two steps too (they ran before the kill)
    assert resumed_epochs[0] == pytest.approx(epochs[0], rel=1e-6)
    assert resumed_epochs[0] == pytest.approx(sum(steps[s] for s in sorted(steps)[:4]) / 4, rel=1e-6)
    assert resumed_epochs[1] == pytest.approx(epochs[1], rel=1e-6)
    acc = logged(uninterrupted[0], "train/online_probe_acc")[1]  # the probe's epoch accuracy, likewise
    assert logged(tmp_path / "resumed", "train/online_probe_acc")[1] == acc and len(acc) == 2


def test_resume_from_an_end_of_epoch_checkpoint_starts_the_next_epoch_afresh(
    common, uninterrupted, compose_cfg, tmp_path
):
    out, steps, epochs = uninterrupted
    ckpt = out / "checkpoints" / "epoch_000.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert float(saved["train_metrics"]["train_loss"]["weight"]) == 4.0  # the finished epoch's sums are in it
    run(compose_cfg("pretrain", [*common, f"ckpt_path={ckpt}"], tmp_path / "resumed"))
    resumed_steps, resumed_epochs = logged(tmp_path / "resumed")
    assert sorted(resumed_steps) == sorted(steps)[4:]
    for step, loss in resumed_steps.items():
        assert loss == pytest.approx(steps[step], rel=1e-6, abs=1e-7), step
    assert set(resumed_epochs) == {1}
    assert resumed_epochs[1] == pytest.approx(epochs[1], rel=1e-6)
    assert resumed_epochs[1] == pytest.approx(sum(steps[s] for s in sorted(steps)[4:]) / 4, rel=1e-6)
