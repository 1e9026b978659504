"""Pretraining throughput benchmark: full training steps (masking, forward, loss, backward, optimiser) of the real
PretrainTask driven by a real Lightning Trainer, on CPU or GPU, in one process.

For each variant (masking strategy x eager/compiled x synthetic/real data) it warms up, then times repeated windows
of steps (CUDA events on GPU) and reports the median: img/s, ms/step, model TFLOP/s from the analytic FLOPs
(docs/speed.md#flops-per-training-image), MFU against a bf16 matmul peak measured in the same run, peak memory,
and each strategy's step time as a ratio to `random` under the same settings. Writes the table as JSON.
`--profile` adds, per variant, where a step's time goes (step_breakdown): the parts of one step timed one by one, and
torch.profiler's top-10 kernels (operators on a CPU) by self time. On real data each row also counts the images and
distinct dataset indices every training epoch delivered (images_read).

    python experiments/bench_pretrain.py --device cuda --backbone vit_base --batch 256 --masking random,semantic
    python experiments/bench_pretrain.py --device cpu            # the default vit_micro / Fashion-MNIST setting
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from semmae.config import config_dir, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name="pretrain", overrides=overrides)


def block_flops(tokens: int, dim: int) -> float:
    """Forward FLOPs of one transformer block on `tokens` tokens of width `dim` (docs/speed.md)."""
    return tokens * (24 * dim * dim + 4 * tokens * dim)


def train_flops_per_image(mae_cfg, mask_ratio: float) -> float:
    """3 x forward: patch embedding (all patches), encoder on visible + CLS, decoder embedding, decoder on all + CLS,
    pixel prediction."""
    from semmae.masking.base import num_keep

    p, c, d, dd = mae_cfg.patch_size, mae_cfg.in_chans, mae_cfg.embed_dim, mae_cfg.decoder_embed_dim
    n = (mae_cfg.img_size // p) ** 2
    vis = num_keep(n, mask_ratio)
    fwd = 2 * n * p * p * c * d
    fwd += mae_cfg.depth * block_flops(vis + 1, d)
    fwd += 2 * (vis + 1) * d * dd
    fwd += mae_cfg.decoder_depth * block_flops(n + 1, dd)
    fwd += 2 * n * dd * p * p * c
    return 3.0 * fwd


def matmul_peak_tflops(device: torch.device, dtype=torch.bfloat16) -> float:
    """Best of a few large square matmuls: the hardware limit the MFU is measured against."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 3
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        t = Timer(device)
        t.start()
        for _ in range(reps):
            a @ b
        best = min(best, t.stop() / reps)
    return 2 * n**3 / best / 1e12


class Timer:
    """Wall time on CPU, CUDA events on GPU (no host sync until stop)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self.begin = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.begin.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            return self.begin.elapsed_time(self.end) / 1000.0
        return time.perf_counter() - self.t0


PARTS = ("masking", "encoder", "decoder", "loss", "backward", "optimizer")


class PhaseClock:
    """Times consecutive parts of a step: CUDA events on a GPU, read after one synchronisation at the end (so the
    marks add no host sync inside the step), time.perf_counter on a CPU, whose operators run synchronously."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks since the last call."""
        marks, self.marks = self.marks, []
        if self.cuda:
            marks[-1].synchronize()
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:])]
        return [b - a for a, b in zip(marks, marks[1:])]


def step_in_parts(task, batch: dict, optimizer, gen: torch.Generator, clock: PhaseClock) -> None:
    """One training step of the MAE with a clock mark between PARTS: MaskedAutoencoder.forward's pieces called one by
    one, eagerly (a compiled forward fuses them, so they cannot be told apart there)."""
    from semmae.models.mae import masked_patch_loss, patchify

    images, mae = batch["image"], task.mae
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
        clock.mark()
        inputs, _ = task.masking_inputs(batch)
        mask = task.masking(images, mae.grid_size, gen, inputs)
        clock.mark()
        latent = mae.encoder.forward_visible(images, mask.ids_keep)
        clock.mark()
        pred = mae.decoder(latent, mask.ids_restore, mae.encoder.num_prefix_tokens)
        clock.mark()
        loss = masked_patch_loss(pred, patchify(images, mae.patch_size), mask.mask, mae.norm_pix_loss)
        clock.mark()
    loss.backward()
    clock.mark()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    clock.mark()


def whole_step(task, batch: dict, optimizer, gen: torch.Generator, forward) -> None:
    """One training step as the task runs it (masking, forward (compiled or not), backward, optimiser), probe off."""
    images = batch["image"]
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
        inputs, _ = task.masking_inputs(batch)
        loss, _ = forward(images, task.masking(images, task.mae.grid_size, gen, inputs))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def top_kernels(prof, cuda: bool, steps: int, n: int = 10) -> list[dict]:
    """The n GPU kernels (on a CPU: operators) with the largest self time, per step, and their share of the total."""
    from torch.autograd import DeviceType

    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    if cuda:  # an operator's self device time repeats its kernels': keep the kernels
        events = [e for e in events if getattr(e, "device_type", None) != DeviceType.CPU] or events
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [
        {
            "name": e.key,
            "self_ms": getattr(e, key) / 1000.0 / steps,
            "share": getattr(e, key) / total,
            "calls_per_step": e.count / steps,
        }
        for e in events[:n]
    ]


def step_breakdown(task, batch: dict, optimizer, device: torch.device, reps: int = 5, profiled: int = 3) -> dict:
    """Where a step's time goes: the parts (step_in_parts) of the fastest of `reps` marked steps, so that they add up
    to one real step, against the fastest of as many unmarked eager steps interleaved with them (the marks' own cost,
    and a check that the parts cover the step: the fastest, as timeit takes it, since other work only adds time), and
    torch.profiler's top-10 kernels over `profiled` steps of the task's own forward (compiled if the variant is)."""
    from torch.profiler import ProfilerActivity, profile

    clock = PhaseClock(device)
    gen = torch.Generator(device=device).manual_seed(0)
    for _ in range(2):
        step_in_parts(task, batch, optimizer, gen, clock)
        clock.intervals()
    marked, wholes = [], []
    for _ in range(reps):
        step_in_parts(task, batch, optimizer, gen, clock)
        marked.append(clock.intervals())
        clock.mark()
        whole_step(task, batch, optimizer, gen, task.mae.forward)
        clock.mark()
        wholes.append(clock.intervals()[0])
    parts_ms = {name: 1000 * t for name, t in zip(PARTS, min(marked, key=sum))}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(profiled):
            whole_step(task, batch, optimizer, gen, task.train_forward)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return {
        "parts_ms": parts_ms,
        "parts_sum_ms": sum(parts_ms.values()),
        "eager_step_ms": 1000 * min(wholes),
        "top_kernels": top_kernels(prof, device.type == "cuda", profiled),
    }


def make_step_profiler(device: torch.device):
    import lightning as L

    class StepProfiler(L.Callback):
        """After the timed steps, while model, optimiser and the last batch are still on the device: step_breakdown.
        A failure is recorded, not raised: the variant's timing stands without its breakdown."""

        def __init__(self):
            self.batch = None
            self.result: dict | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.batch = batch

        def on_train_end(self, trainer, pl_module):
            try:
                with torch.enable_grad():
                    self.result = step_breakdown(pl_module, self.batch, trainer.optimizers[0], device)
            except Exception as exc:  # noqa: BLE001  (a diagnostic: say why, keep the measurement)
                self.result = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}

    return StepProfiler()


def make_image_counter():
    import lightning as L

    class ImageCounter(L.Callback):
        """The dataset indices every training epoch delivered, kept on the device until the run ends (no sync)."""

        def __init__(self):
            self.epochs: dict[int, list[torch.Tensor]] = {}
            self.dataset: int | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if "index" in batch:
                self.epochs.setdefault(trainer.current_epoch, []).append(batch["index"])

        def on_train_end(self, trainer, pl_module):
            dm = trainer.datamodule
            self.dataset = dm.split_size("train") if hasattr(dm, "split_size") else None

        def summary(self) -> dict:
            """{"dataset": training images, "epochs": [{"epoch", "images", "distinct"}]}; the last epoch is the one
            max_steps cut short."""
            rows = []
            for epoch, seen in sorted(self.epochs.items()):
                flat = torch.cat(seen).cpu()
                rows.append({"epoch": epoch, "images": int(flat.numel()), "distinct": int(flat.unique().numel())})
            return {"dataset": self.dataset, "epochs": rows}

    return ImageCounter()


def make_window_timer(device, warmup: int, steps: int, windows: int):
    import lightning as L

    class WindowTimer(L.Callback):
        """Times windows of `steps` training steps after `warmup` steps, from batch start to batch start."""

        def __init__(self):
            self.times: list[float] = []
            self.timer = Timer(device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            i = trainer.global_step
            if i >= warmup and (i - warmup) % steps == 0:
                if i > warmup:
                    self.times.append(self.timer.stop())
                if len(self.times) < windows:
                    self.timer.start()

    return WindowTimer()


def synthetic_datamodule(batch, channels, size, num_classes, device, batches):
    """The same normalised float batch, already on the device, `batches` times per epoch: the model alone."""
    import lightning as L
    from torch.utils.data import DataLoader, IterableDataset

    class Repeat(IterableDataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.batch = {
                "image": torch.randn(batch, channels, size, size, generator=g).to(device),
                "label": torch.randint(0, num_classes, (batch,), generator=g).to(device),
            }
            self.batch["image_plain"] = self.batch["image"]

        def __len__(self):
            return batches

        def __iter__(self):
            for _ in range(batches):
                yield self.batch

    class Synthetic(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(Repeat(), batch_size=None)

    return Synthetic()


# semantic_features is timed after its warm-up (warmup 0): every step runs the encoder on the full batch (no gradient)
# for its features, a forward the online probe then shares instead of running its own on its share of the batch
MASKING_EXTRA = {"semantic_features": ["masking.warmup=0.0"]}
SEPARATE = ("semantic_features",)  # stated apart from the other strategies: its cost is mostly that forward


def run_variant(args, masking: str, compiled: bool, data: str, device: torch.device, extra: list[str] = ()) -> dict:
    import lightning as L
    from hydra.utils import instantiate

    overrides = [
        f"backbone={args.backbone}",
        f"masking={masking}",
        *MASKING_EXTRA.get(masking, []),
        f"dataset.batch_size={args.batch}",
        f"model.compile={str(compiled).lower()}",
        f"model.probe.enabled={str(args.probe).lower()}",
        f"dataset.channels={args.channels}",
        "seed=0",
        *args.override,
        *extra,
    ]
    if args.img_size:
        overrides += [f"backbone.img_size={args.img_size}"]
    if args.patch_size:
        overrides += [f"backbone.patch_size={args.patch_size}"]
    cfg = compose(overrides)
    total = args.warmup + args.steps * args.windows + 1
    task = instantiate(cfg.model)
    if data == "synthetic":
        dm = synthetic_datamodule(
            args.batch, args.channels, cfg.backbone.img_size, cfg.dataset.num_classes, device, total
        )
    else:
        dm = instantiate(cfg.dataset)
        dm.prepare_data()
    timer = make_window_timer(device, args.warmup, args.steps, args.windows)
    counter = make_image_counter()
    callbacks = [timer, counter] + ([make_step_profiler(device)] if args.profile else [])
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_steps=total,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        log_every_n_steps=50,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(task, datamodule=dm)
    if len(timer.times) < args.windows:
        raise RuntimeError(f"only {len(timer.times)} timed windows (data too short?)")
    step_s = statistics.median(timer.times) / args.steps
    flops = train_flops_per_image(cfg.model.mae, cfg.masking.mask_ratio)
    img_s = args.batch / step_s
    row = {
        "masking": masking,
        "compiled": compiled,
        "data": data,
        "batch": args.batch,
        "extra": list(extra),
        "backbone": args.backbone,
        "img_size": cfg.backbone.img_size,
        "patch_size": cfg.backbone.patch_size,
        "probe": args.probe,
        "img_s": img_s,
        "step_ms": 1000 * step_s,
        "model_tflops": img_s * flops / 1e12,
        "gflop_per_image": flops / 1e9,
        "window_step_ms": [1000 * t / args.steps for t in timer.times],
    }
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if counter.epochs:
        row["images_read"] = counter.summary()
    if args.profile:
        row["profile"] = callbacks[-1].result
    return row


def profile_lines(row: dict) -> list[str]:
    """A variant's step_breakdown as text: the parts, their sum against the whole step, the top kernels."""
    prof = row.get("profile")
    name = f"{row['masking']} ({'compiled' if row['compiled'] else 'eager'}, {row['data']} data)"
    if not prof:
        return []
    if "error" in prof:
        return [f"{name}: no breakdown ({prof['error']})"]
    parts = "  ".join(f"{k} {v:.2f}" for k, v in prof["parts_ms"].items())
    lines = [
        f"{name}, where an eager step's time goes (ms): {parts}; sum {prof['parts_sum_ms']:.2f} of "
        f"{prof['eager_step_ms']:.2f} timed whole; the variant's own step: {row['step_ms']:.2f}",
        f"  top kernels by self time ({'compiled' if row['compiled'] else 'eager'} step):",
    ]
    lines += [
        f"  {k['share']:6.1%} {k['self_ms']:8.3f} ms {k['calls_per_step']:6.1f}x  {k['name'][:90]}"
        for k in prof["top_kernels"]
    ]
    return lines


def endless(loader):
    """The loader's batches, epoch after epoch (a small dataset has fewer batches than a timing needs)."""
    while True:
        yield from loader


def data_throughput(args, device: torch.device) -> dict:
    """Images per second the real data path delivers (index + on-device augmentation), without the model."""
    from hydra.utils import instantiate

    overrides = [
        f"backbone={args.backbone}",
        f"dataset.batch_size={args.batch}",
        f"dataset.channels={args.channels}",
        *args.override,
    ]
    if args.img_size:
        overrides += [f"backbone.img_size={args.img_size}"]
    if args.patch_size:
        overrides += [f"backbone.patch_size={args.patch_size}"]
    cfg = compose(overrides)
    dm = (
        instantiate(cfg.dataset, resident_device=str(device))
        if cfg.dataset.get("resident")
        else instantiate(cfg.dataset)
    )
    dm.prepare_data()
    dm.setup()
    loader = dm.train_dataloader()
    n, images = 0, 0
    timer = Timer(device)
    for i, batch in enumerate(endless(loader)):
        if i == 3:
            timer.start()
        if i >= 3:
            batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            out = dm.augment_batch(batch, train=True) if hasattr(dm, "augment_batch") else batch
            images += out["image"].shape[0]
            n += 1
        if n >= 20:
            break
    seconds = timer.stop()
    return {"data_img_s": images / seconds, "resident": bool(cfg.dataset.get("resident", False))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbone", default=None, help="default: vit_base on GPU, vit_micro on CPU")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--patch-size", type=int, default=None)
    ap.add_argument("--channels", type=int, default=None, help="default: 3 on GPU (ImageNet-like), 1 on CPU")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument(
        "--masking", default="random,semantic,semantic_informative,semantic_stratified,random_units,semantic_features"
    )
    ap.add_argument("--variants", default=None, help="eager,compiled (default: both on GPU, eager on CPU)")
    ap.add_argument("--data", default=None, help="synthetic,real (default: both)")
    ap.add_argument("--probe", action="store_true", help="include the online probe's full-image forward")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also time the parts of a step and list the top-10 kernels by self time, per variant",
    )
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed window")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--json", default=None, help="where to write the results (default: stdout only)")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every variant")
    ap.add_argument(
        "--baseline",
        nargs="*",
        default=None,
        help="overrides that rebuild an earlier configuration: its random / eager / real-data step is "
        "timed in the same run and compared with the current one (before / after)",
    )
    args = ap.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.backbone = args.backbone or ("vit_base" if gpu else "vit_micro")
    args.channels = args.channels or (3 if gpu else 1)
    args.warmup = args.warmup if args.warmup is not None else (15 if gpu else 3)
    args.steps = args.steps or (20 if gpu else 5)
    variants = (args.variants or ("eager,compiled" if gpu else "eager")).split(",")
    datas = (args.data or "synthetic,real").split(",")
    torch.backends.cuda.matmul.allow_tf32 = True

    peak = matmul_peak_tflops(device)
    rows = []
    for compiled in [v == "compiled" for v in variants]:
        for data in datas:
            for masking in args.masking.split(","):
                row = run_variant(args, masking, compiled, data, device)
                rows.append(row)
                if args.json:  # keep what is measured so far, in case the run is cut short
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.json).write_text(json.dumps({"partial": True, "peak_tflops": peak, "rows": rows}))
                print(
                    f"  {masking:>17} {'compiled' if compiled else 'eager':>8} {data:>9}: "
                    f"{row['img_s']:8.0f} img/s  {row['step_ms']:7.1f} ms/step",
                    flush=True,
                )
    for row in rows:
        row["mfu"] = row["model_tflops"] / peak
        ref = next(
            (
                r
                for r in rows
                if r["masking"] == "random" and r["compiled"] == row["compiled"] and r["data"] == row["data"]
            ),
            None,
        )
        row["step_ratio_to_random"] = row["step_ms"] / ref["step_ms"] if ref else None
    baseline = None
    if args.baseline is not None:
        before = run_variant(args, "random", False, "real", device, extra=args.baseline)
        after = next((r for r in rows if r["masking"] == "random" and not r["compiled"] and r["data"] == "real"), None)
        after = after or run_variant(args, "random", False, "real", device)
        baseline = {
            "overrides": args.baseline,
            "before_img_s": before["img_s"],
            "after_img_s": after["img_s"],
            "speedup": after["img_s"] / before["img_s"],
        }
    loader = data_throughput(args, device) if "real" in datas else {}
    env = {
        "device": torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bf16_matmul_peak_tflops": peak,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    result = {"env": env, "loader": loader, "rows": rows, "baseline": baseline}

    print(
        f"\n{env['device']} | torch {env['torch']} | bf16 matmul peak {peak:.1f} TFLOP/s"
        + (f" | data path {loader['data_img_s']:.0f} img/s" if loader else "")
    )
    head = (
        f"{'masking':>17} {'mode':>8} {'data':>9} {'img/s':>8} {'ms/step':>8} {'TFLOP/s':>8} {'MFU':>6} {'x random':>8}"
    )
    if gpu:
        head += f" {'GiB':>6}"
    print(head)
    for r in rows:
        line = (
            f"{r['masking']:>17} {'compiled' if r['compiled'] else 'eager':>8} {r['data']:>9} {r['img_s']:8.0f} "
            f"{r['step_ms']:8.1f} {r['model_tflops']:8.2f} {r['mfu']:6.3f} {r['step_ratio_to_random'] or 0:8.3f}"
        )
        if gpu:
            line += f" {r['peak_mem_gib']:6.1f}"
        print(line)
    for r in rows:
        if r["masking"] in SEPARATE and r["step_ratio_to_random"]:
            probe = "shared with the online probe" if r["probe"] else "the online probe is off"
            print(
                f"\n{r['masking']} ({'compiled' if r['compiled'] else 'eager'}, {r['data']} data): "
                f"{r['step_ratio_to_random']:.2f}x random's step, after its warm-up; it adds a no-gradient forward "
                f"of the encoder on the full batch for its features ({probe}) and k-means on them"
            )
    for r in rows:
        if r.get("profile"):
            print("\n" + "\n".join(profile_lines(r)))
    if baseline:
        print(
            f"\nbefore ({' '.join(baseline['overrides'])}): {baseline['before_img_s']:.0f} img/s; "
            f"now: {baseline['after_img_s']:.0f} img/s; {baseline['speedup']:.2f}x (random, eager, real data)"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
