"""What the diagnostics cost (docs/artifacts.md#cost), printed against their targets; nothing is asserted.

python experiments/bench_diagnostics.py analyze [--ckpt PATH] [--images 1000] [--threads 2]
    semmae-analyze with every diagnostic on the first N Fashion-MNIST validation images of the default vit_micro
    (ckpt=random unless given): wall time and the time of each part, against 60 s on 2 cores.
python experiments/bench_diagnostics.py callback [--steps 20] [--threads 2]
    the attention callback at its defaults (every validation epoch, 64 images, head sinks + CLS statistics)
    against a default pretraining epoch (vit_micro, 40,000 images, batch 256): the callback's analysis time,
    with and without the diagnostics, over the epoch time measured on --steps real training steps; target 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def bench_analyze(args) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench_analyze_"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [
        sys.executable,
        "-m",
        "semmae.analyze",
        f"ckpt={args.ckpt}",
        f"num_images={args.images}",
        f"hydra.run.dir={out}",
        *args.overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"semmae-analyze failed:\n{proc.stderr[-2000:]}")
    results = json.loads((out / "results.json").read_text())
    timings = next(iter(results["timings_s"].values()))
    load = os.getloadavg()[0]
    print(f"semmae-analyze, {args.images} images, ckpt={args.ckpt}, {args.threads} threads (load average {load:.1f}):")
    for part, seconds in timings.items():
        print(f"  {part:<12} {seconds:6.1f} s")
    print(f"  {'diagnostics':<12} {sum(timings.values()):6.1f} s")
    print(f"  {'process':<12} {wall:6.1f} s  (start-up, data, figures and files included; target <= 60 s)")
    return {"images": args.images, "timings_s": timings, "process_s": round(wall, 1), "load_average": load}


def bench_callback(args) -> dict:
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from experiments.bench_pretrain import compose
    from semmae.callbacks.attention_maps import AttentionMapCallback

    torch.set_num_threads(args.threads)

    class StepTimer(L.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_start(self, *a):
            self.t = time.perf_counter()

        def on_train_batch_end(self, *a):
            self.times.append(time.perf_counter() - self.t)

    cfg = compose(["logger=none"])
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    model = instantiate(cfg.model)
    timer = StepTimer()
    callback = AttentionMapCallback()
    root = tempfile.mkdtemp(prefix="bench_callback_")
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=args.steps,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, callback],
        default_root_dir=root,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=datamodule)
    step = statistics.median(timer.times[2:] or timer.times)
    steps_per_epoch = -(-int(cfg.dataset.train_subset or 60000) // int(cfg.dataset.batch_size))
    epoch = step * steps_per_epoch

    def analysis_time(parts) -> float:
        callback.diagnostics = replace(callback.diagnostics, parts=parts)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            callback.analyse(trainer, model, "bench")
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    plain, full = analysis_time(()), analysis_time(("heads", "cls"))
    load = os.getloadavg()[0]
    print(
        f"attention callback at its defaults ({callback.num_images} images, every validation epoch), "
        f"{args.threads} threads (load average {load:.1f}):"
    )
    print(f"  training step        {1000 * step:7.1f} ms  -> a default epoch ({steps_per_epoch} steps) {epoch:6.1f} s")
    print(f"  analysis, metrics    {plain:7.2f} s  = {100 * plain / epoch:5.1f}% of the epoch")
    print(
        f"  analysis, + heads/cls{full:7.2f} s  = {100 * full / epoch:5.1f}% of the epoch "
        f"(the diagnostics add {100 * (full - plain) / epoch:.1f}%; target: the callback <= 10%)"
    )
    return {
        "step_s": step,
        "epoch_s": epoch,
        "analysis_s": plain,
        "analysis_with_diagnostics_s": full,
        "overhead_pct": 100 * full / epoch,
        "load_average": load,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["analyze", "callback"])
    p.add_argument("--ckpt", default="random")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("overrides", nargs="*", help="more semmae-analyze overrides (analyze)")
    args = p.parse_args(argv)
    result = bench_analyze(args) if args.what == "analyze" else bench_callback(args)
    if args.json:
        from semmae.utils.atomic import atomic_write_json

        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
