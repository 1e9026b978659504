"""Nodes written once and placed by defaults lists: the checkpoint source (source/checkpoint.yaml), the encoder
built from it (encoder/checkpoint.yaml) and the artifact settings (analysis/artifacts.yaml); and ckpt=null and
ckpt=random are the same randomly initialised encoder in every entry point."""

from __future__ import annotations

import re

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from semmae.config import config_dir

CONF = config_dir()
READERS = ("linprobe", "finetune", "segment", "export", "analyze")  # the entry points that read an encoder
ENCODER_NODE = {"linprobe": "model.encoder", "finetune": "model.encoder", "segment": "model.segmenter.encoder"}


def node(path: str):
    return OmegaConf.load(CONF / path)


def yaml_files_defining(key: str) -> list[str]:
    """conf/ files with `key:` at the start of a line (any indent)."""
    pattern = re.compile(rf"^\s*{re.escape(key)}:", re.M)
    return sorted(str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml") if pattern.search(p.read_text()))


def test_the_source_keys_are_written_once(compose_cfg):
    source = node("source/checkpoint.yaml")
    fixes = OmegaConf.to_container(source.pop("encoder"))  # the training-free fixes, beside each task's overrides
    assert set(source) == {"ckpt", "ckpt_file", "trust_checkpoint"}
    assert set(fixes) == {"test_time_registers", "soap", "fix"}
    for key in ("ckpt", "ckpt_file", "test_time_registers", "soap"):
        assert yaml_files_defining(key) == ["source/checkpoint.yaml"], key
    for task in READERS:
        cfg = compose_cfg(task)
        assert {k: cfg[k] for k in source} == OmegaConf.to_container(source), task
        assert {k: OmegaConf.to_container(cfg.encoder)[k] for k in fixes} == fixes, task


def test_the_encoder_node_is_written_once(compose_cfg):
    encoder = OmegaConf.to_container(node("encoder/checkpoint.yaml"))
    users = [p for p in CONF.rglob("*.yaml") if "semmae.models.loading.build_encoder" in p.read_text()]
    assert [str(p.relative_to(CONF)) for p in users] == ["encoder/checkpoint.yaml"]
    for task, where in ENCODER_NODE.items():
        cfg = compose_cfg(task, ["ckpt=x.ckpt", "ckpt_file=w.safetensors", "trust_checkpoint=true"])
        built = OmegaConf.select(cfg, where)
        raw = OmegaConf.to_container(built, resolve=False)
        assert {k: raw[k] for k in encoder} == encoder, task  # the interpolations themselves
        assert (built.source, built.weights_file, built.trust) == ("x.ckpt", "w.safetensors", True), task
        assert (built.img_size, built.in_chans) == (cfg.backbone.img_size, cfg.dataset.channels), task
    ft = compose_cfg("finetune").model.encoder  # each task's own settings stay in its file
    assert (ft.global_pool, ft.fc_norm, ft.drop_path_rate, ft.num_classes) == ("avg", True, 0.1, 10)
    assert compose_cfg("segment").model.segmenter.encoder.drop_path_rate == 0.1


def test_the_artifact_settings_are_one_node_for_analyze_and_the_callback(compose_cfg):
    from semmae.analysis import ArtifactSettings

    settings = OmegaConf.to_container(node("analysis/artifacts.yaml"))
    assert set(settings) == {
        "tau",
        "k",
        "flat_fraction",
        "shallow_blocks",
        "vmax",
        "parts",
        "sinks",
        "outliers",
        "invariance",
        "asymmetry",
    }
    for key in settings:
        callback_own = ["callbacks/attention_maps.yaml"] if key == "parts" else []  # it runs the attention-only parts
        assert yaml_files_defining(key) == ["analysis/artifacts.yaml", *callback_own], key
    analyze = compose_cfg("analyze")
    assert OmegaConf.to_container(analyze.analysis) == settings
    for task, callbacks in (("pretrain", "callbacks=[default,attention_maps]"), ("finetune", None)):
        cb = compose_cfg(task, [callbacks] if callbacks else []).callbacks.attention_maps
        shared = {k: v for k, v in settings.items() if k != "parts"}  # the callback runs the attention-only parts
        assert {k: cb[k] for k in shared} == shared, task
        assert list(cb.parts) == ["heads", "cls"], task
    # an override of one reaches it, not the other; the callback measures with the settings analyze uses
    cfg = compose_cfg(
        "pretrain",
        [
            "callbacks=[default,attention_maps]",
            "callbacks.attention_maps.tau=3",
            "callbacks.attention_maps.shallow_blocks=[1,2]",
        ],
    )
    callback = instantiate(cfg.callbacks.attention_maps)
    assert callback.settings == ArtifactSettings(tau=3.0, k=5.0, flat_fraction=0.25, shallow_blocks=(1, 2))
    assert compose_cfg("analyze", ["analysis.tau=3"]).analysis.tau == 3.0


@pytest.mark.parametrize("task", ["linprobe", "finetune", "segment"])
def test_null_and_random_build_the_same_random_encoder(compose_cfg, task):
    from semmae.cli.analyze import RANDOM, analysis_encoder
    from semmae.models.sources import resolve_source

    states = []
    for spelling in ("null", "random"):
        cfg = compose_cfg(task, [f"ckpt={spelling}"])
        assert resolve_source(cfg.ckpt, cfg.paths.root_dir) is None
        torch.manual_seed(cfg.seed)  # what begin_run's seed_everything does before the model is built
        encoder = instantiate(OmegaConf.select(cfg, ENCODER_NODE[task]))
        assert encoder.source is None
        states.append(encoder.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    if task == "linprobe":  # the study's floor: linprobe's ckpt=null and analyze's ckpt=random are one encoder
        analyzed = analysis_encoder(compose_cfg("analyze", ["ckpt=random"]), RANDOM).state_dict()
        assert analyzed.keys() == states[0].keys()
        assert all(torch.equal(states[0][k], analyzed[k]) for k in analyzed)


def test_export_refuses_null_and_random_alike(compose_cfg):
    from semmae.cli.export import run
    from semmae.errors import ConfigError

    for spelling in ("null", "random"):
        with pytest.raises(ConfigError, match="semmae-export needs ckpt=PATH"):
            run(compose_cfg("export", [f"ckpt={spelling}"]))
