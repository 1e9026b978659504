"""rerun_this_job: what Lightning's DDP launcher reads (sys.argv, hydra.run.dir) describes the current multirun job."""

import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict, read_write

from semmae.utils.ddp import rerun_this_job


def test_in_a_multirun_job_argv_and_run_dir_point_at_the_job(compose_cfg, tmp_path, monkeypatch):
    cfg = compose_cfg("pretrain", ["masking.mask_ratio=0.9"], tmp_path / "multirun" / "3")
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.overrides.task = ["masking.mask_ratio=0.9", "trainer=ddp"]
    HydraConfig.instance().set_config(cfg)
    sweep_argv = ["/x/semmae-pretrain", "-m", "masking.mask_ratio=0.5,0.9", "trainer=ddp"]
    monkeypatch.setattr(sys, "argv", sweep_argv)
    template = HydraConfig.get().run.dir
    with rerun_this_job():
        assert sys.argv == ["/x/semmae-pretrain", "masking.mask_ratio=0.9", "trainer=ddp"]
        assert HydraConfig.get().run.dir == str(tmp_path / "multirun" / "3")
    assert sys.argv == sweep_argv and HydraConfig.get().run.dir == template


def test_a_single_run_is_left_alone(compose_cfg, monkeypatch):
    compose_cfg("pretrain", [])
    monkeypatch.setattr(sys, "argv", ["semmae-pretrain", "trainer=ddp"])
    run_dir = HydraConfig.get().run.dir
    with rerun_this_job():
        assert sys.argv == ["semmae-pretrain", "trainer=ddp"] and HydraConfig.get().run.dir == run_dir
