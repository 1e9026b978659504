"""Training progress for the masking (docs/masking.md#training-progress): PretrainTask.make_mask hands strategies that
ask for it (uses_progress) batch["progress"] = global_step / total steps, a pure function of global_step, so a run
resumed from a checkpoint sees at every step the progress the uninterrupted run saw."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from semmae.cli.pretrain import run
from semmae.masking.base import batch_progress, training_progress
from tests.tasks.test_pretrain import TINY
from tests.tasks.test_resume import Killed


def test_progress_is_a_pure_function_of_the_step():
    assert [training_progress(s, 8) for s in (0, 2, 4, 8, 12)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert training_progress(3, 0) == 1.0 and training_progress(0, 0) == 0.0  # total clamped to >= 1
    assert batch_progress(None) == 0.0 and batch_progress({}) == 0.0 and batch_progress({"progress": 0.3}) == 0.3
    assert batch_progress({"progress": 7}) == 1.0 and batch_progress({"progress": -1}) == 0.0


def record_progress(strategy, seen: list):
    scores = strategy.scores

    def recording(images, grid_size, generator, batch=None):
        seen.append(None if batch is None else batch.get("progress"))
        return scores(images, grid_size, generator, batch)

    strategy.scores = recording


@pytest.mark.parametrize("name,hands_over", [("semantic_stratified", True), ("random", False)])
def test_make_mask_hands_over_the_progress_of_the_step(compose_cfg, name, hands_over):
    model = instantiate(compose_cfg("pretrain", [*TINY, f"masking={name}"]).model)
    seen = []
    record_progress(model.masking, seen)
    images = torch.randn(2, 1, 32, 32)
    for step in (0, 3, 10, 12):
        model.trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=10, global_rank=0, current_epoch=0)
        batch = {"image": images}
        m = model.make_mask(batch, 0, step)
        assert "progress" not in batch  # the caller's batch is left alone
        assert torch.all((~m.mask).sum(1) == 16)
    assert seen == ([0.0, 0.3, 1.0, 1.0] if hands_over else [None] * 4)


class RecordProgress(L.Callback):
    """(global_step, progress) of every training step's mask, in RecordProgress.seen."""

    seen: list = []

    def on_fit_start(self, trainer, pl_module):
        scores = pl_module.masking.scores

        def recording(images, grid_size, generator, batch=None):
            if trainer.training and not trainer.sanity_checking:
                RecordProgress.seen.append((trainer.global_step, batch["progress"]))
            return scores(images, grid_size, generator, batch)

        pl_module.masking.scores = recording


def test_a_resumed_run_sees_the_progress_of_an_uninterrupted_one(compose_cfg, fmnist_root, tmp_path):
    common = [
        f"dataset.root={fmnist_root}",
        *TINY,
        "masking=semantic_stratified",
        "logger=none",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "callbacks=none",
        f"+callbacks.record._target_={__name__}.RecordProgress",
    ]
    ckpt = tmp_path / "step2.ckpt"
    RecordProgress.seen = []
    with pytest.raises(Killed):
        run(
            compose_cfg(
                "pretrain",
                [
                    *common,
                    "+callbacks.die._target_=tests.tasks.test_resume.SaveAndDie",
                    "+callbacks.die.step=2",
                    f"+callbacks.die.path={ckpt}",
                ],
                tmp_path / "killed",
            )
        )
    before = list(RecordProgress.seen)
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 2
    RecordProgress.seen = []
    run(compose_cfg("pretrain", [*common, f"ckpt_path={ckpt}"], tmp_path / "resumed"))
    after = list(RecordProgress.seen)
    assert [s for s, _ in before] == [0, 1] and [s for s, _ in after] == [2, 3, 4, 5]
    # 6 steps in all: the progress at step s is s / 6 before and after the round trip, as without it
    assert [p for _, p in before + after] == [training_progress(s, 6) for s in range(6)]


@pytest.mark.parametrize("name", ["semantic_informative", "semantic_stratified", "random_units", "semantic_features"])
def test_the_new_strategies_read_nothing_back_to_the_host(compose_cfg, name):
    from tests.tasks.test_step_sync import count_host_reads

    strategy = instantiate(compose_cfg("pretrain", [f"masking={name}"]).model.masking)
    images = torch.randn(4, 1, 32, 32)
    reads: list = []
    with count_host_reads(reads):
        m = strategy(
            images,
            (8, 8),
            torch.Generator().manual_seed(0),
            {"image": images, "progress": 0.4, "features": torch.randn(4, 64, 16)},
        )
    assert reads == [] and m.mask.shape == (4, 64)
