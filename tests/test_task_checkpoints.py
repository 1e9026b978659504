"""Every task's checkpoint loads as an encoder by one rule (issue 14). One real checkpoint of each task (pretrain,
linear probe, fine-tune, segmentation) is written by the real entry points, run as subprocesses on the
Fashion-MNIST fixture; each must load with torch.load(weights_only=True), record the key prefix of its encoder
(checkpoint["semmae"]["encoder_prefix"]), and load as that encoder in-process (load_encoder) and through
semmae-analyze and semmae-export. Before the change a segmentation checkpoint failed there with "holds no encoder
weights". A checkpoint written before tasks recorded the prefix (the key deleted) still loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semmae.models.encoder import ViTEncoder
from semmae.models.loading import load_encoder
from semmae.models.weights import ENCODER_KEYS, HEAD_KEYS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

KINDS = ("pretrain", "linprobe", "finetune", "segment")
PREFIXES = {"pretrain": "mae.encoder.", "linprobe": "encoder.", "finetune": "encoder.", "segment": "segmenter.encoder."}
RECORDED_KIND = {"pretrain": "pretrain", "linprobe": "linprobe", "finetune": "finetune", "segment": "segment"}

BACKBONE = [
    "backbone.embed_dim=32",
    "backbone.depth=4",
    "backbone.num_heads=2",
    "backbone.decoder_embed_dim=16",
    "backbone.decoder_depth=1",
    "backbone.decoder_num_heads=2",
]
TINY = [
    "dataset.train_subset=64",
    "dataset.val_subset=64",
    "dataset.batch_size=32",
    "dataset.eval_batch_size=64",
    "logger=none",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("PROJECT_ROOT", "SEMMAE_TRACEBACK")}
    out.update(PYTHONPATH=str(REPO), WANDB_MODE="offline", WANDB_SILENT="true")
    return out


def run_cli(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """semmae-<name> as the user types it (the console script; python -m semmae.<name> where it is not installed)."""
    script = BIN / f"semmae-{name}"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", f"semmae.{name}"]
    return subprocess.run([*cmd, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)


def run_module(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=300
    )


def produce(task: str, args: list[str], root: Path) -> Path:
    """Run one task; -> the checkpoint its results.json names (last.ckpt, or the best one of linprobe / finetune)."""
    run_dir = root / task
    proc = run_module(f"semmae.{task}", [*args, f"hydra.run.dir={run_dir}"], root)
    assert proc.returncode == 0, f"semmae-{task} failed:\n{proc.stderr[-4000:]}"
    results = json.loads((run_dir / "results.json").read_text())
    path = results.get("best_checkpoint") or results.get("checkpoint")
    assert path and Path(path).is_file(), f"{task}: results.json names no checkpoint on disk: {path!r}"
    return Path(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, fmnist_root) -> dict[str, Path]:
    """kind -> the checkpoint path that task's run wrote; each task run once, from the pretraining checkpoint."""
    root = tmp_path_factory.mktemp("task_ckpts")
    data = [f"dataset.root={fmnist_root}", *TINY]
    pre = produce("pretrain", [*BACKBONE, *data, "callbacks.reconstruction.num_images=2"], root)
    source = f"ckpt={pre}"
    return {
        "pretrain": pre,
        "linprobe": produce("linprobe", [source, *data], root),
        "finetune": produce("finetune", [source, *data, "~callbacks.attention_maps"], root),
        "segment": produce(
            "segment",
            [
                source,
                "dataset=fashion_mnist_seg",
                *data,
                "model.segmenter.channels=8",
                "model.segmenter.aux_channels=8",
                "~callbacks.segmentation_figure",
            ],
            root,
        ),
    }


def encoder_inside(ckpt: dict) -> ViTEncoder:
    """The reference: a ViTEncoder built from the checkpoint's own record, holding exactly the tensors under the
    prefix the task recorded (strict: nothing missing, nothing extra)."""
    meta = ckpt["semmae"]
    prefix = meta["encoder_prefix"]
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    config = {k: meta["model"][k] for k in (*ENCODER_KEYS, "qkv_bias") if k in meta["model"]}
    config.update({k: v for k, v in (meta.get("head") or {}).items() if k in HEAD_KEYS})
    encoder = ViTEncoder(**config)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


def images(encoder: ViTEncoder, n: int = 3) -> torch.Tensor:
    size = encoder.patch_embed.img_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return torch.randn(n, encoder.patch_embed.proj.in_channels, size, size, generator=torch.Generator().manual_seed(0))


def same_encoder(loaded: ViTEncoder, reference: ViTEncoder) -> None:
    loaded.eval()
    ref_state, got_state = reference.state_dict(), loaded.state_dict()
    assert sorted(got_state) == sorted(ref_state)
    for key, value in ref_state.items():
        assert torch.equal(got_state[key], value), key
    x = images(reference)
    with torch.no_grad():
        assert torch.allclose(loaded.forward_features(x), reference.forward_features(x), atol=1e-6)


# --- the files themselves -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_loads_weights_only_and_records_its_encoder_prefix(checkpoints, kind):
    for path in sorted(checkpoints[kind].parent.glob("*.ckpt")):  # last.ckpt and the per-epoch / best file alike
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = ckpt["semmae"]
        assert meta["kind"] == RECORDED_KIND[kind], path
        assert meta["encoder_prefix"] == PREFIXES[kind], path
        assert any(k.startswith(f"{PREFIXES[kind]}patch_embed.") for k in ckpt["state_dict"]), path


# --- in-process -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_load_encoder_gives_the_encoder_inside_the_checkpoint(checkpoints, kind):
    path = checkpoints[kind]
    reference = encoder_inside(torch.load(path, map_location="cpu", weights_only=True))
    same_encoder(load_encoder(path), reference)


def test_segmentation_encoder_is_the_trained_one_not_its_pretrained_source(checkpoints):
    """The segmentation file's encoder is its own (trained) weights, not a re-read of the pretraining source."""
    seg = load_encoder(checkpoints["segment"]).state_dict()
    pre = load_encoder(checkpoints["pretrain"]).state_dict()
    assert sorted(seg) == sorted(pre)
    assert any(not torch.equal(seg[k], pre[k]) for k in seg if k.startswith("blocks."))


# --- the command lines ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_analyze_cli_reads_the_checkpoint(checkpoints, fmnist_root, tmp_path, kind):
    out = tmp_path / "analyze"
    proc = run_cli(
        "analyze",
        [
            f"ckpt={checkpoints[kind]}",
            "num_images=8",
            "batch_size=8",
            "figure_images=2",
            f"dataset.root={fmnist_root}",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "holds no encoder weights" not in proc.stderr
    report = json.loads((out / "artifacts.json").read_text())
    assert report and (out / "attention_blocks.png").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_export_cli_writes_the_checkpoints_encoder(checkpoints, tmp_path, kind):
    path = checkpoints[kind]
    out = tmp_path / "x.pth"
    proc = run_cli("export", [f"ckpt={path}", f"out={out}", f"hydra.run.dir={tmp_path / 'export'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    exported = torch.load(out, map_location="cpu", weights_only=True)
    assert exported["semmae"]["kind"] == "encoder"
    reference = encoder_inside(torch.load(path, map_location="cpu", weights_only=True))
    same_encoder(load_encoder(out), reference)  # the exported file is the same encoder again


# --- files written before tasks recorded the prefix ------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_without_encoder_prefix_still_loads(checkpoints, tmp_path, kind):
    """A file from before the change: the same checkpoint with semmae.encoder_prefix deleted (read by its kind)."""
    ckpt = torch.load(checkpoints[kind], map_location="cpu", weights_only=True)
    reference = encoder_inside(ckpt)
    del ckpt["semmae"]["encoder_prefix"]
    legacy = tmp_path / "legacy.ckpt"
    torch.save(ckpt, legacy)
    assert "encoder_prefix" not in torch.load(legacy, map_location="cpu", weights_only=True)["semmae"]
    same_encoder(load_encoder(legacy), reference)
