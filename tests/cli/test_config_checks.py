"""The validation pass over the composed config: every shared setting that would have reached Lightning, torch or the
filesystem as a traceback (or silently meant something else) is one line naming the key, exit code 2."""

import pytest

from semmae.cli.config_checks import check_config
from semmae.errors import ConfigError
from tests.conftest import one_error_line, run_entry

TINY = ["logger=none", "dataset.train_subset=64", "dataset.val_subset=32", "trainer.max_epochs=1"]


@pytest.mark.parametrize(
    "override,needle",
    [
        ("seed=-1", "seed=-1: must be a whole number from 0 to 4294967295"),
        ("seed=4294967296", "seed=4294967296"),
        ("seed=abc", "seed='abc'"),
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1: must be a whole number >= 1"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1: must be a number >= 0"),
        ("dataset.num_workers=-1", "dataset.num_workers=-1: must be a whole number >= 0 (or 'auto')"),
        ("dataset.eval_batch_size=0", "dataset.eval_batch_size=0"),
        ("dataset.train_subset=0", "dataset.train_subset=0"),
        ("dataset.train_subset=-59488", "dataset.train_subset=-59488"),
        ("dataset.val_subset=0", "dataset.val_subset=0"),
        (
            "dataset.crop_scale=[1.5,0.1]",
            "dataset.crop_scale=[1.5, 0.1]: must be [low, high] with 0 < low <= high <= 1",
        ),
    ],
)
def test_a_bad_shared_setting_is_one_line(compose_cfg, override, needle):
    cfg = compose_cfg("pretrain", [*TINY, override])
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert needle in str(err.value)


def test_the_defaults_of_every_entry_point_pass(compose_cfg):
    for name in ("pretrain", "linprobe", "finetune", "segment", "analyze", "masks", "export"):
        check_config(compose_cfg(name, []))


def test_the_command_line_says_it_before_any_work(tmp_path, fmnist_root):
    code, err = run_entry(
        "pretrain", [*TINY, f"dataset.root={fmnist_root}", "seed=abc", f"hydra.run.dir={tmp_path / 'run'}"]
    )
    assert code == 2
    assert "seed='abc'" in one_error_line(err, "semmae-pretrain")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_directory_below_a_file_is_one_line(tmp_path, fmnist_root):
    (tmp_path / "afile").write_text("x")
    code, err = run_entry(
        "pretrain", [*TINY, f"dataset.root={fmnist_root}", f"hydra.run.dir={tmp_path / 'afile' / 'run'}"]
    )
    assert code == 2
    assert f"is below the file {tmp_path / 'afile'}" in one_error_line(err, "semmae-pretrain")
    assert (tmp_path / "afile").read_text() == "x"


def test_an_export_below_a_file_is_one_line(compose_cfg, tmp_path):
    (tmp_path / "afile").write_text("x")
    cfg = compose_cfg("export", ["ckpt=null", f"out={tmp_path / 'afile' / 'enc.pth'}"])
    with pytest.raises(ConfigError, match="is a file, so nothing can be written below it"):
        check_config(cfg)


def test_a_bad_seed_in_a_sweep_fails_its_job_and_the_others_run(tmp_path, fmnist_root):
    import json

    sweep = tmp_path / "sweep"
    code, err = run_entry(
        "pretrain",
        [
            "-m",
            *TINY,
            f"dataset.root={fmnist_root}",
            "dataset.batch_size=32",
            "backbone.depth=1",
            "callbacks.reconstruction.num_images=2",
            "seed=abc,0",
            f"hydra.sweep.dir={sweep}",
        ],
    )
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert (
        failed["error"] == "seed='abc': must be a whole number from 0 to 4294967295" and failed["type"] == "ConfigError"
    )
    assert json.loads((sweep / "1" / "results.json").read_text())["checkpoint"]
