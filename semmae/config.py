"""Where the Hydra configs live, and the OmegaConf resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf


def config_dir() -> Path:
    """$SEMMAE_CONFIG_DIR, else the configs packaged in a wheel (semmae/conf), else the repository's conf/."""
    env = os.environ.get("SEMMAE_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "pretrain.yaml").is_file():
            return candidate.resolve()
    raise FileNotFoundError("semmae configs not found: set SEMMAE_CONFIG_DIR to the conf/ folder")


def auto_precision() -> str:
    """bf16 mixed precision where the GPU supports it, full fp32 elsewhere (CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)
    from semmae.optim.batching import grad_accum, per_device_batch
    from semmae.utils.slurm import slurm_gpus_per_node, slurm_launcher_target

    for name, fn in (
        ("per_device_batch", per_device_batch),
        ("grad_accum", grad_accum),
        ("slurm_launcher", slurm_launcher_target),
        ("slurm_gpus", slurm_gpus_per_node),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
