"""Probe speed on cached features, the two numbers `docs/probing.md` states as targets:

- training an attentive head (EP by default) on the cached tokens of `vit_micro` for all of Fashion-MNIST (60,000
  training and 10,000 test images x 65 tokens x 128, bf16, as `semmae-linprobe model.head=ep` caches them): one full
  run of the task as configured (conf/linprobe.yaml: its epochs, batch and optimiser), fit + test, through Lightning;
- DINO's weighted k-NN (k = 20, 10, 50) of 10,000 test features against 60,000 training features (width 128).

The features are random: the time does not depend on their values. Wall time and the process's CPU time are printed
with the load average, since a shared machine stretches the wall time; the targets (5 min, 30 s) are for 2 cores.

    python experiments/bench_probes.py                       # EP, the configured epochs
    python experiments/bench_probes.py --head mhca --epochs 5 --json outputs/bench/probes.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import warnings
from pathlib import Path

import torch

TRAIN, TEST, TOKENS, WIDTH, CLASSES = 60000, 10000, 65, 128, 10
TARGETS_S = {"head": 300.0, "knn": 30.0}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn):
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - wall, cpu_seconds() - cpu


def config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from semmae.config import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="linprobe", overrides=["ckpt=null", "hydra.run.dir=.", *overrides])


def bench_head(head: str, epochs: int | None, overrides: list[str]) -> dict:
    """One fit + test of the head on random cached tokens of the full data set, as semmae-linprobe runs it."""
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    from semmae.data.feature_cache import FeatureDataModule
    from semmae.models.block_tokens import view_name

    cfg = config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = "."
    epochs = int(epochs or cfg.trainer.max_epochs)
    encoder = instantiate(cfg.model.encoder)
    depth = len(encoder.blocks)
    model = instantiate(cfg.model, encoder=encoder, head=head, block=depth)
    g = torch.Generator().manual_seed(0)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[cfg.model.cache_dtype]
    split = {}
    for name, n in (("train", TRAIN), ("val", TEST)):
        split[name] = (
            {
                view_name("tokens", depth): torch.randn(n, TOKENS, WIDTH, generator=g).to(dtype),
                view_name("pooled", depth): torch.randn(n, WIDTH, generator=g),
            },
            torch.randint(0, CLASSES, (n,), generator=g),
        )
    data = FeatureDataModule(
        split["train"], split["val"], cfg.dataset.batch_size, cfg.dataset.eval_batch_size, view=model.view
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    _, wall, cpu = timed(lambda: (trainer.fit(model, data), trainer.test(model, data, verbose=False)))
    steps = trainer.global_step
    return {
        "head": head,
        "epochs": epochs,
        "steps": steps,
        "batch": int(cfg.dataset.batch_size),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "ms_per_step": round(1000 * wall / max(1, steps), 1),
        "optimizer": OmegaConf.select(cfg, "model.optim.optimizer._target_"),
    }


def bench_knn() -> dict:
    from semmae.analysis.knn import knn_accuracy

    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(TRAIN, WIDTH, generator=g), torch.randn(TEST, WIDTH, generator=g)
    ytrain, ytest = torch.randint(0, CLASSES, (TRAIN,), generator=g), torch.randint(0, CLASSES, (TEST,), generator=g)
    _, wall, cpu = timed(lambda: knn_accuracy(train, ytrain, test, ytest, CLASSES, ks=(20, 10, 50)))
    return {
        "train": TRAIN,
        "test": TEST,
        "width": WIDTH,
        "ks": [20, 10, 50],
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--head", default="ep", choices=["ep", "mhca", "linear"], help="the head to train (default ep)")
    p.add_argument("--epochs", type=int, help="default: conf/linprobe.yaml's trainer.max_epochs")
    p.add_argument("--skip-head", action="store_true", help="only the k-NN")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/linprobe.yaml, e.g. model.ep.num_queries=16")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    load = os.getloadavg()
    print(f"torch threads {threads}, CPUs {os.cpu_count()}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    out = {"threads": threads, "load_average": [round(x, 2) for x in load]}
    out["knn"] = bench_knn()
    k = out["knn"]
    print(
        f"k-NN {TRAIN:,} x {TEST:,} features of width {WIDTH}, k = 20, 10, 50: {k['wall_s']:.1f} s wall, "
        f"{k['cpu_s']:.1f} s CPU (target <= {TARGETS_S['knn']:.0f} s)"
    )
    if not args.skip_head:
        out["head"] = h = bench_head(args.head, args.epochs, args.overrides)
        print(
            f"{args.head} head on cached tokens {TRAIN:,} + {TEST:,} x {TOKENS} x {WIDTH}: {h['epochs']} epochs, "
            f"{h['steps']} steps of {h['batch']}, {h['wall_s']:.0f} s wall ({h['ms_per_step']:.0f} ms a step), "
            f"{h['cpu_s']:.0f} s CPU (target <= {TARGETS_S['head']:.0f} s)"
        )
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
