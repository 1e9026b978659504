"""A crafted checkpoint runs no code: whatever entry point reads it, a pickle that names a function is refused with
one line naming the file and the opt-in, and its payload (creating a file) never runs. trust_checkpoint=true is the
only way to unpickle such a file. The tensors-only files the project writes load safely (weights_only)."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semmae.errors import CheckpointError
from semmae.models.weights import read_checkpoint
from semmae.utils.safe_load import load_file

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls open(marker, "w"): it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(path: Path, marker: Path) -> Path:
    """A checkpoint in torch.save's format, shaped like a semmae pretraining checkpoint, carrying the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "semmae": {"kind": "pretrain", "model": {}},
            "state_dict": {"mae.x": torch.zeros(1)},
            "hyper_parameters": Payload(marker),
        },
        path,
    )
    return path


def run(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    logger = [] if module.endswith(("analyze", "export")) else ["logger=none"]  # those two have no logger group
    return subprocess.run(
        [sys.executable, "-m", module, *args, *logger], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


SMALL = ["dataset.train_subset=64", "dataset.val_subset=64"]


@pytest.mark.parametrize(
    "module,args",
    [
        ("semmae.linprobe", ["ckpt=evil.pth", *SMALL]),
        ("semmae.finetune", ["ckpt=evil.pth", *SMALL]),
        ("semmae.segment", ["ckpt=evil.pth", *SMALL]),
        ("semmae.analyze", ["ckpt=evil.pth", "num_images=8"]),
        ("semmae.export", ["ckpt=evil.pth"]),
        ("semmae.linprobe", SMALL),  # ckpt=latest finds the crafted outputs/pretrain/<run>/checkpoints/last.ckpt
        ("semmae.pretrain", ["ckpt_path=evil.pth", *SMALL]),
    ],
    ids=["linprobe", "finetune", "segment", "analyze", "export", "latest", "pretrain-resume"],
)
def test_a_crafted_checkpoint_runs_nothing_from_any_entry_point(tmp_path, fmnist_root, module, args):
    marker = tmp_path / "PWNED"
    crafted(tmp_path / "evil.pth", marker)
    crafted(tmp_path / "outputs" / "pretrain" / "crafted" / "checkpoints" / "last.ckpt", marker)
    data = [] if module.endswith(("export", "segment")) else [f"dataset.root={fmnist_root}"]
    proc = run(module, [*args, *data], tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert (
        "was not loaded" in lines[0] and "a reference to io.open" in lines[0] and "trust_checkpoint=true" in lines[0]
    ), lines[0]
    assert ("evil.pth" in lines[0]) or ("last.ckpt" in lines[0]), lines[0]
    assert not marker.exists()


def test_trust_checkpoint_is_the_only_way_to_unpickle_it(tmp_path):
    marker = tmp_path / "PWNED"
    path = crafted(tmp_path / "evil.pth", marker)
    with pytest.raises(CheckpointError, match="trust_checkpoint=true"):
        read_checkpoint(path)
    assert not marker.exists()
    read_checkpoint(path, trust=True)  # the user's explicit choice: the payload runs
    assert marker.exists()


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", "the file is empty"),
        *[(random.Random(seed).randbytes(4096), "not a file torch.save wrote") for seed in range(32)],
    ],
    ids=["empty", *[f"random{seed}" for seed in range(32)]],
)
def test_unreadable_files_are_one_line(tmp_path, content, needle):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=needle):
        load_file(path)


def test_a_truncated_checkpoint_is_named(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.randn(256, 256)}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt: damaged or truncated"):
        load_file(cut)
