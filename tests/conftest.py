"""Shared fixtures: small datasets written in their real on-disk formats, and Hydra configs composed from conf/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")  # figures without a display, as the console scripts draw them
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from semmae.data.idx import write_idx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def synthetic_garments(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST-shaped uint8 images whose class decides where a bright blob sits (learnable, not real)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, col = 3 + (c // 5) * 12, 2 + (c % 5) * 5
        images[i, r : r + 10, col : col + 6] = 200 + rng.integers(0, 55)
    return images, labels


def write_fashion_mnist(root: Path, n_train: int = 600, n_test: int = 300, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_garments(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return root


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def compose(config_name: str, overrides: list[str], output_dir: Path):
    """Compose conf/<config_name>.yaml as the CLI would, with the Hydra runtime set so ${hydra:...} resolves."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from semmae.config import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(config_name: str, overrides: list[str] | None = None, output_dir: Path | None = None):
        return compose(config_name, overrides or [], output_dir or tmp_path / "run")

    return _compose


def run_entry(name: str, argv: list[str]) -> tuple[int, str]:
    """Run the console script semmae-<name> in this process (as its main() would from the shell) -> (exit code,
    stderr). Faster than a subprocess for checking what a command line does; the run directory's lock is released
    afterwards, as the end of a process would."""
    import contextlib
    import importlib
    import io
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from semmae.utils import run_dir

    main = importlib.import_module(f"semmae.cli.{name}").main
    GlobalHydra.instance().clear()
    argv_before, err = sys.argv, io.StringIO()
    sys.argv = [f"semmae-{name}", *argv]
    code = 0
    try:
        with contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv_before
        for fh in run_dir._held.values():
            fh.close()
        run_dir._held.clear()
    return code, err.getvalue()


def one_error_line(stderr: str, prog: str) -> str:
    """The error line of a failed command, checked to be the only line on stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), stderr
    return lines[0]
