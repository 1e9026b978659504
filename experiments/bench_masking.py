"""Masking benchmark: milliseconds per batch of every strategy, and each as a share of one pretraining step.

Settings: batch 256 (--batch) at 224 px / patch 16 (3 channels, ImageNet-like) and 32 px / patch 4 (1 channel, the
Fashion-MNIST default), on smooth random images already on the device. The reference is one full pretraining step
(random masking, forward, loss, backward, AdamW) of `vit_base` at 224 px on a GPU (bf16 autocast, fused AdamW) or
of the default `vit_micro` at 32 px on a CPU, measured in the same run; every strategy's time is reported as a ratio
to it. Rows:
- random, block, grid, semantic (color_kmeans), colored_noise, semantic_informative, semantic_stratified (at
  progress 0: no batch["progress"], every region stratified), random_units, semantic_features (after its warm-up, on
  random patch features of width 768 at 224 px and 128 at 32 px, as ViT-B and vit_micro give; the encoder's
  full-image forward that produces them is part of the training step, timed by make bench): the whole strategy,
  scores + keep_lowest;
- semantic[given]: the device part of the `given` and `slic` segmenters (majority label per patch from a
  pixel-resolution map, components, scores);
- slic worker: scikit-image SLIC on the CPU per batch on one core (it runs in the DataLoader workers, in parallel
  with training: divide by the number of workers).

GPU timing uses CUDA events around windows of calls with no host synchronisation inside; --check-sync also runs
every strategy once under torch.cuda.set_sync_debug_mode("error") and reports any call that synchronises.

    python experiments/bench_masking.py                      # CPU
    python experiments/bench_masking.py --device cuda --json outputs/bench_masking_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_pretrain import Timer  # noqa: E402  (experiments/ is on the path when run as a script)

SETTINGS = {"224/16": (224, 16, 3), "32/4": (32, 4, 1)}
STRATEGIES = (
    "random",
    "block",
    "grid",
    "semantic",
    "colored_noise",
    "semantic_informative",
    "semantic_stratified",
    "random_units",
    "semantic_features",
    "semantic[given]",
)
FEATURE_WIDTH = {"224/16": 768, "32/4": 128}  # the encoders' widths at these settings (ViT-B, vit_micro)


def timed_ms(fn, device, warmup: int, windows: int, per_window: int) -> float:
    """Median over windows of the mean time per call, in ms."""
    for i in range(warmup):
        fn(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    timer = Timer(device)
    for w in range(windows):
        timer.start()
        for i in range(per_window):
            fn(warmup + w * per_window + i)
        times.append(timer.stop() / per_window)
    return 1000 * statistics.median(times)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from semmae.config import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="pretrain", overrides=overrides)


def strategy(name: str):
    from hydra.utils import instantiate

    option, _, segmenter = name.partition("[")
    overrides = [f"masking={option}"] + ([f"masking.segmenter={segmenter.rstrip(']')}"] if segmenter else [])
    return instantiate(compose(overrides).masking)


def smooth_images(b: int, channels: int, size: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    low = torch.randn(b, channels, 6, 6, generator=g)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).to(device)


def voronoi_maps(b: int, size: int, cells: int, device) -> torch.Tensor:
    """Pixel-resolution segment maps [B, size, size] of `cells` random Voronoi cells (a stand-in for superpixels)."""
    g = torch.Generator().manual_seed(1)
    seeds = torch.rand(b, cells, 2, generator=g) * size
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    pos = torch.stack([yy, xx], -1).reshape(1, -1, 1, 2)
    owner = torch.cat([(pos - seeds[i : i + 1, None]).pow(2).sum(-1).argmin(-1) for i in range(b)])
    return owner.reshape(b, size, size).to(device)


def reference_step_ms(args, device) -> tuple[str, float]:
    """One pretraining step (random masking, forward, loss, backward, AdamW) of the reference model."""
    from hydra.utils import instantiate

    from semmae.masking import RandomMasking
    from semmae.masking.generator import StepGenerator

    gpu = device.type == "cuda"
    backbone, channels = ("vit_base", 3) if gpu else ("vit_micro", 1)
    cfg = compose([f"backbone={backbone}", f"dataset.channels={channels}"])
    mae = instantiate(cfg.model.mae).to(device)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=gpu)
    masking, gens = RandomMasking(0.75), StepGenerator(0)
    x = smooth_images(args.batch, channels, cfg.backbone.img_size, device)

    def step(i):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            loss, _ = mae(x, masking(x, mae.grid_size, gens(device, 0, 0, 0, i)))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = timed_ms(step, device, warmup=args.warmup, windows=args.windows, per_window=2 if gpu else 1)
    return f"{backbone} {cfg.backbone.img_size} px / {cfg.backbone.patch_size}, batch {args.batch}", ms


def slic_worker_ms(args, size: int, channels: int) -> float:
    """SLIC on the CPU, one core: ms per batch of args.batch images (measured on a few, scaled)."""
    from semmae.masking.segmenters import SlicSegments

    images = smooth_images(8, channels, size, "cpu")
    slic = SlicSegments(n_segments=8)
    slic(images[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    for img in images:
        slic(img)
    per_image = (time.perf_counter() - t0) / len(images)
    torch.set_num_threads(threads)
    return 1000 * per_image * args.batch


def check_sync(fn) -> str:
    """'ok' if fn runs without any host synchronisation, else the error."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return "ok"
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--settings", default=",".join(SETTINGS), help="img/patch pairs: 224/16,32/4")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--windows", type=int, default=None)
    ap.add_argument("--no-slic", action="store_true", help="skip the SLIC worker timing")
    ap.add_argument("--check-sync", action="store_true", help="GPU: report strategies that synchronise the host")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    ap.add_argument("--json", default=None, help="where to write the results (default: stdout only)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
    args.windows = args.windows or (10 if gpu else 5)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True

    from semmae.masking.generator import StepGenerator

    ref_name, ref_ms = reference_step_ms(args, device)
    print(f"reference step: {ref_name}: {ref_ms:.1f} ms", flush=True)
    names = args.strategies.split(",")
    settings = args.settings.split(",")
    rows: dict[str, dict] = {name: {} for name in names}
    sync: dict[str, dict] = {}
    for setting in settings:
        size, patch, channels = SETTINGS[setting]
        grid = (size // patch, size // patch)
        images = smooth_images(args.batch, channels, size, device)
        batch = {
            "image": images,
            "segments": voronoi_maps(args.batch, size, 8, device),
            "features": torch.randn(args.batch, grid[0] * grid[1], FEATURE_WIDTH[setting], device=device),
        }
        gens = StepGenerator(0)
        for name in names:
            s = strategy(name)

            given = {**batch, "progress": 1.0} if name == "semantic_features" else batch  # after its warm-up

            def call(i, s=s, given=given, images=images, grid=grid, gens=gens):
                return s(images, grid, gens(device, 0, 0, 0, i), given)

            ms = timed_ms(call, device, args.warmup, args.windows, per_window=5 if gpu else 1)
            rows[name][setting] = {"ms": ms, "ratio_to_step": ms / ref_ms}
            if gpu and args.check_sync:
                sync.setdefault(name, {})[setting] = check_sync(lambda: call(0))
            print(f"  {setting:>6} {name:>20}: {ms:8.2f} ms  ({100 * ms / ref_ms:5.1f}% of a step)", flush=True)
        if not args.no_slic:
            ms = slic_worker_ms(args, size, channels)
            rows.setdefault("slic worker (1 core)", {})[setting] = {"ms": ms, "ratio_to_step": ms / ref_ms}
    env = {
        "device": torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "reference_step": ref_name,
        "reference_step_ms": ref_ms,
    }
    result = {"env": env, "rows": rows, **({"sync_check": sync} if sync else {})}

    print(f"\n{env['device']} | torch {env['torch']} | {env['threads']} threads | batch {args.batch}")
    print(f"reference: one pretraining step of {ref_name} = {ref_ms:.1f} ms")
    print(f"{'strategy':>22} " + " ".join(f"{s + ' ms':>11} {'x step':>7}" for s in settings))
    for name, cols in rows.items():
        cells = [
            f"{cols[s]['ms']:11.2f} {cols[s]['ratio_to_step']:7.3f}" if s in cols else f"{'-':>11} {'-':>7}"
            for s in settings
        ]
        print(f"{name:>22} " + " ".join(cells))
    if sync:
        bad = {n: v for n, v in sync.items() if any(r != "ok" for r in v.values())}
        print("host syncs: " + ("none" if not bad else json.dumps(bad)))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
