"""The training-free fixes as an encoder option of the entry points: a linear probe (and a fine-tuning run) of an
encoder with a planted outlier gets its test-time registers and records them; segment refuses SOAP at the output it
does not read; export refuses both; the options are one node shared by every entry point."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from semmae.errors import ConfigError
from tests.analysis.test_analyze import write_planted_export

FAST = [
    "debug=fast_dev_run",
    "logger=none",
    "dataset.batch_size=32",
    "dataset.eval_batch_size=64",
    "encoder.fix.images=32",
    "encoder.fix.register_neurons=1",
]


@pytest.mark.parametrize("task", ["linprobe", "finetune"])
def test_an_evaluation_run_applies_and_records_the_fix(compose_cfg, fmnist_root, tmp_path, task):
    from importlib import import_module

    ckpt = write_planted_export(tmp_path / "planted.pth")
    cfg = compose_cfg(task, [f"ckpt={ckpt}", f"dataset.root={fmnist_root}", *FAST, "encoder.test_time_registers=1"])
    import_module(f"semmae.cli.{task}").run(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    applied = results["training_free"]["applied"]
    assert len(applied) == 1 and "1 test-time register(s)" in applied[0] and "1:7" in applied[0]
    assert results["training_free"]["settings"]["test_time_registers"] == 1


def test_segment_refuses_soap_at_an_output_it_does_not_read(compose_cfg, fmnist_root):
    from semmae.cli.segment import run

    cfg = compose_cfg("segment", ["ckpt=null", f"dataset.root={fmnist_root}", *FAST, "encoder.soap=true"])
    with pytest.raises(ConfigError, match="soap_block"):
        run(cfg)


def test_export_refuses_a_fix(compose_cfg, tmp_path):
    from semmae.cli.export import run

    ckpt = write_planted_export(tmp_path / "planted.pth")
    for option in ("encoder.soap=true", "encoder.test_time_registers=2"):
        cfg = compose_cfg("export", [f"ckpt={ckpt}", f"out={tmp_path / 'out.pth'}", option])
        with pytest.raises(ConfigError, match="not a weight"):
            run(cfg)
    cfg = compose_cfg("export", [f"ckpt={ckpt}", f"out={tmp_path / 'out.pth'}"])
    run(cfg)  # the fix keys themselves are not build overrides
    assert (tmp_path / "out.pth").is_file()


@pytest.mark.parametrize("task", ["analyze", "linprobe", "finetune", "segment", "export"])
def test_every_entry_point_has_the_same_fix_options(compose_cfg, task):
    node = OmegaConf.to_container(compose_cfg(task).encoder)
    assert node["test_time_registers"] == 0 and node["soap"] is False
    assert node["fix"]["images"] == 256 and node["fix"]["soap_block"] is None
