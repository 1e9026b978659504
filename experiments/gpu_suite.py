"""The GPU suite: semmae measured at the scale its users work at, in one run that fits a short GPU lease, most
important figure first. Each step runs its commands as subprocesses under the step's own deadline; after each step
summary.json (re-read and extended) and summary.md are rewritten, so a run cut short still returns what it measured.
A failed or timed-out step is recorded and the next one runs; a step that would not fit in what is left of
--budget-s is skipped with a line saying so.

  1. throughput  bench_pretrain.py, ViT-B/16 at 224 px, batch 256, bf16: compiled and eager, synthetic data on the
                 device and the real data path (Fashion-MNIST resident, upscaled), random, semantic and the readings;
                 the targets (compiled random >= 6,000 img/s and MFU >= 0.45, semantic <= 1.03x random's step) and,
                 where one is missed, where a step's time goes (bench_pretrain --profile)              ~2.5 min
  2. data        an ImageFolder of 512 JPEGs written here, dataset.decode=auto with DataLoader workers, 51 steps:
                 img/s real against synthetic, and every epoch reads each image exactly once          ~1 min
  3. sync        the sync-debug tests of every masking strategy (tests/tasks/test_step_sync.py -m gpu)   ~1 min
  4. readings    run.py --preset gpu-suite-readings: random, random_registers, semantic, semantic_features
                 with ViT-T/4 at equal epochs, into RESULTS.md (section `gpu`)                         what is left
  5. probes      EP, k-NN and linear probes of step 4's checkpoints (skipped where semmae-linprobe does
                 not accept model.head=ep / knn)                                                      ~1 min

What comes back from $OUT (at most 8 files, 2 folders down): summary.json, summary.md, suite.log (every command and
its output), profile.md (the step breakdowns), RESULTS.md and extras.tar (its figures: `tar xf extras.tar`).
Models, studies and data go to --work. Where hydra-core or omegaconf is missing (the GPU machine's Python), the
wheels in --wheels are installed into --target, which the subprocesses get on PYTHONPATH.

On the GPU machine (device tool), prepared on this machine first:
    bash ../shared/tools/device-wheels.sh && mkdir -p .fmnist && cp /usr/share/datasets/fashion-mnist/*.gz .fmnist/ \
        && { grep -qx /.fmnist/ .git/info/exclude || echo /.fmnist/ >> .git/info/exclude; }
    run(command="PYTHONUNBUFFERED=1 python3 experiments/gpu_suite.py --device cuda --fmnist .fmnist --out $OUT",
        carry=[".whl", ".fmnist"], timeout_s=600)
--budget-s (570 s at full scale) keeps the run inside one 10-minute command (the machine's start comes on top);
what is left of 15 minutes fits a rerun of a short step on the still-warm machine, e.g. --steps data sync.

On a CPU, every command composed and every file read back in seconds per step (the CPU test runs this):
    python experiments/gpu_suite.py --device cpu --scale tiny --fmnist DIR --out /tmp/suite
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments"))

from semmae.utils.atomic import atomic_write, atomic_write_json, atomic_write_text  # noqa: E402

STUDY = REPO / "experiments" / "semantic_vs_random"
FMNIST = "/usr/share/datasets/fashion-mnist"
NEEDED = ("hydra", "omegaconf")  # what the GPU machine's Python lacks; wandb too, which no command here uses
OUT_FILES = ("summary.json", "summary.md", "suite.log", "profile.md", "RESULTS.md", "extras.tar")
TARGETS = {"img_s": 6000.0, "mfu": 0.45, "semantic_ratio": 1.03}  # DESIGN.md section 7, on one H200
READINGS = ("semantic_informative", "semantic_stratified", "random_units", "semantic_features")
PROBE_HEADS = ("ep", "knn")
TINY_VIT = [
    "backbone.embed_dim=32",
    "backbone.depth=3",
    "backbone.num_heads=2",
    "backbone.decoder_embed_dim=16",
    "backbone.decoder_depth=1",
    "backbone.decoder_num_heads=2",
]


@dataclass(frozen=True)
class Scale:
    """What every step runs at one scale: `full` on a GPU, `tiny` (seconds per step) on a CPU."""

    bench: tuple[str, ...]  # bench_pretrain options shared by steps 1 and 2
    overrides: tuple[str, ...]  # its Hydra overrides
    modes: tuple[str, ...]  # compiled / eager (tiny: eager only, compiling on a CPU takes ~50 s)
    images: int  # step 2's ImageFolder: training images (a multiple of the batch: every epoch reads each once)
    classes: int
    image_px: int
    workers: int
    data_bench: tuple[str, ...]  # step 2's step counts (warm-up + windows x steps + 1)
    preset: str  # step 4's run.py preset
    budget_s: float
    reserve_s: float  # what step 4 keeps back for the report after its last task starts


SCALES = {
    "full": Scale(
        bench=("--backbone", "vit_base", "--batch", "256", "--warmup", "10", "--steps", "10", "--windows", "5"),
        overrides=(),
        modes=("compiled", "eager"),
        images=512,
        classes=4,
        image_px=224,
        workers=8,
        data_bench=("--backbone", "vit_base", "--batch", "256", "--warmup", "10", "--steps", "10", "--windows", "4"),
        preset="gpu-suite-readings",
        budget_s=570.0,
        reserve_s=60.0,
    ),
    "tiny": Scale(
        bench=("--backbone", "vit_micro", "--batch", "16", "--warmup", "1", "--steps", "2", "--windows", "2"),
        overrides=tuple(TINY_VIT),
        modes=("eager",),
        images=24,
        classes=3,
        image_px=48,
        workers=2,
        data_bench=("--backbone", "vit_micro", "--batch", "8", "--warmup", "2", "--steps", "2", "--windows", "2"),
        preset="gpu-suite-tiny",
        budget_s=3600.0,
        reserve_s=30.0,
    ),
}


class StepFailed(Exception):
    """A step's command failed or its check did not hold: the one line the summary shows."""


class StepTimeout(Exception):
    """A step ran past its deadline; its commands were stopped."""


class StepSkipped(Exception):
    """A step that cannot run here (no CUDA, no data, a feature not landed): why."""


# --- the environment --------------------------------------------------------------------------------------------
def missing_modules() -> list[str]:
    """The NEEDED modules this Python cannot import."""
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def wheels_to_install(missing: list[str], wheel_dir: Path) -> list[Path]:
    """Every wheel of wheel_dir when a needed module is missing, none when nothing is; missing modules and no wheels
    is an error that says how to build them."""
    if not missing:
        return []
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise SystemExit(
            f"gpu_suite: error: {', '.join(missing)} not importable and no wheels in {wheel_dir}: run "
            "`bash ../shared/tools/device-wheels.sh` in the repository and carry .whl"
        )
    return wheels


def install_wheels(wheels: list[Path], target: Path) -> None:
    """pip-install the wheels into target, offline, and make them importable here too."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(target),
        *map(str, wheels),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"gpu_suite: error: installing {len(wheels)} wheels into {target} failed: "
            f"{last_line(proc.stderr + proc.stdout)}"
        )
    sys.path.insert(1, str(target))  # after the repository: its semmae wins over the wheel's
    importlib.invalidate_caches()


def prepare_imports(wheel_dir: Path, target: Path) -> dict:
    """Install the wheels if hydra or omegaconf is missing -> the setup record (what was missing, what was done)."""
    missing = missing_modules()
    wheels = wheels_to_install(missing, wheel_dir)
    if wheels:
        install_wheels(wheels, target)
        still = missing_modules()
        if still:
            raise SystemExit(
                f"gpu_suite: error: {', '.join(still)} still not importable after installing "
                f"{wheel_dir}/*.whl into {target}"
            )
    return {"missing": missing, "installed": [w.name for w in wheels], "target": str(target) if wheels else None}


def subprocess_env(target: str | None) -> dict[str, str]:
    """The commands' environment: this repository first on PYTHONPATH, then the installed wheels."""
    paths = [str(REPO), *([target] if target else []), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "offline",
        "PYTHONWARNINGS": "ignore",
    }


def environment(device: str) -> dict:
    """The device and the versions the figures were measured with."""
    import lightning
    import timm
    import torch

    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "cpus": os.cpu_count(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            device=torch.cuda.get_device_name(0),
            memory_gib=round(props.total_memory / 2**30, 1),
            gpus=torch.cuda.device_count(),
        )
    else:
        env.update(device=cpu_name(), memory_gib=None, gpus=0)
    return env


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def fmnist_present(root: Path) -> bool:
    """The four IDX files of Fashion-MNIST (gzipped or not) are in root."""
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return all((root / n).is_file() or (root / f"{n}.gz").is_file() for n in names)


# --- running commands -------------------------------------------------------------------------------------------
def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def stop(proc: subprocess.Popen) -> None:
    """End a command and everything it started (its own process group): TERM, then KILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Suite:
    """The run's settings, paths and clock; `call` runs one command into the log."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]):
        self.args, self.env = args, env
        self.scale: Scale = SCALES[args.scale]
        self.out, self.work = Path(args.out), Path(args.work)
        self.log = self.out / "suite.log"
        self.fmnist = Path(args.fmnist)
        self.start = time.monotonic()
        self.commands: list[str] = []
        self.deadline = float("inf")

    @property
    def cuda(self) -> bool:
        return self.args.device == "cuda"

    def remaining(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        """A progress line: on stdout and in the log."""
        print(text, flush=True)
        with open(self.log, "a") as log:
            log.write(text + "\n")

    def call(self, argv: list[str], until: float | None = None) -> str:
        """Run argv from the repository root, output into the log, until `until` (default: the step's deadline)
        -> its output. Non-zero exit: StepFailed with its last line; past the deadline: StepTimeout."""
        until = self.deadline if until is None else until
        command = shlex.join(argv)
        self.commands.append(command)
        with open(self.log, "a") as log:
            log.write(f"\n$ {command}\n")
            log.flush()
            begin = log.tell()
            proc = subprocess.Popen(
                argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )  # its own process group: stop() ends its workers too
            try:
                code = proc.wait(timeout=max(1.0, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop(proc)
                raise StepTimeout(f"stopped at the step's deadline: {shlex.join(argv[:4])} ...") from None
        with open(self.log, "rb") as log:
            log.seek(begin)
            output = log.read().decode("utf-8", "replace")
        if code != 0:
            raise StepFailed(f"exit {code}: {last_line(output)}")
        return output

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]


# --- step 1: throughput -----------------------------------------------------------------------------------------
def bench_argv(
    suite: Suite, mode: str, data: str, maskings, json_path: Path, profile: bool, extra: tuple[str, ...] = ()
) -> list[str]:
    s = suite.scale
    argv = suite.python(
        "experiments/bench_pretrain.py",
        "--device",
        suite.args.device,
        *s.bench,
        "--variants",
        mode,
        "--data",
        data,
        "--masking",
        ",".join(maskings),
        "--json",
        str(json_path),
    )
    argv += ["--profile"] if profile else []
    overrides = [*s.overrides, *extra]
    return argv + (["--override", *overrides] if overrides else [])


def read_bench(path: Path) -> tuple[list[dict], float | None]:
    """The rows and bf16 peak of a bench_pretrain JSON, final or partial (written after every variant)."""
    if not path.is_file():
        return [], None
    data = json.loads(path.read_text())
    peak = data.get("peak_tflops") or (data.get("env") or {}).get("bf16_matmul_peak_tflops")
    return data.get("rows", []), peak


def slim_row(row: dict, peak: float | None) -> dict:
    keep = ("masking", "compiled", "data", "img_s", "step_ms", "model_tflops", "peak_mem_gib", "profile", "images_read")
    slim = {k: row[k] for k in keep if k in row}
    slim["mode"] = "compiled" if row["compiled"] else "eager"
    slim["mfu"] = row.get("mfu", row["model_tflops"] / peak if peak else None)
    return slim


def find_row(rows: list[dict], masking: str, mode: str, data: str) -> dict | None:
    return next((r for r in rows if (r["masking"], r["mode"], r["data"]) == (masking, mode, data)), None)


def add_ratios(rows: list[dict]) -> None:
    """Each row's step time over random's with the same mode and data (measured in another command if need be)."""
    for row in rows:
        ref = find_row(rows, "random", row["mode"], row["data"])
        row["x_random"] = row["step_ms"] / ref["step_ms"] if ref else None


def check_targets(rows: list[dict], mode: str) -> list[dict]:
    """DESIGN.md's GPU targets, read on the synthetic rows of `mode` (compiled at full scale)."""
    random, semantic = find_row(rows, "random", mode, "synthetic"), find_row(rows, "semantic", mode, "synthetic")
    checks = []
    if random:
        checks.append(
            {
                "target": f"random img/s >= {TARGETS['img_s']:.0f}",
                "value": random["img_s"],
                "met": random["img_s"] >= TARGETS["img_s"],
                "rows": ["random"],
            }
        )
        if random.get("mfu") is not None:
            checks.append(
                {
                    "target": f"random MFU >= {TARGETS['mfu']}",
                    "value": random["mfu"],
                    "met": random["mfu"] >= TARGETS["mfu"],
                    "rows": ["random"],
                }
            )
    if random and semantic:
        checks.append(
            {
                "target": f"semantic step <= {TARGETS['semantic_ratio']}x random",
                "value": semantic["x_random"],
                "met": semantic["x_random"] <= TARGETS["semantic_ratio"],
                "rows": ["random", "semantic"],
            }
        )
    return checks


def bench_runs(suite: Suite) -> list[tuple[str, str, str, tuple[str, ...], bool]]:
    """(label, mode, data, maskings, profile) in order of importance: the targets' rows first."""
    first = suite.scale.modes[0]
    runs = [(f"{first}-synthetic", first, "synthetic", ("random", "semantic"), True)]
    runs += [(f"{m}-synthetic", m, "synthetic", ("random", "semantic"), True) for m in suite.scale.modes[1:]]
    runs += [(f"{first}-real", first, "real", ("random", "semantic"), False)]
    runs += [(f"{first}-readings", first, "synthetic", READINGS, True)]
    return runs


def throughput(suite: Suite, fig: dict) -> None:
    fig["rows"], fig["errors"], fig["targets"] = [], [], []
    mode = suite.scale.modes[0]
    try:
        for label, run_mode, data, maskings, profile in bench_runs(suite):
            extra = ()
            if data == "real":
                if not fmnist_present(suite.fmnist):
                    fig["notes"] = [f"{label}: skipped, no Fashion-MNIST in {suite.fmnist} (--fmnist)"]
                    continue
                extra = (f"dataset.root={suite.fmnist}", "dataset.train_subset=null")
            path = suite.work / f"bench_{label}.json"
            path.unlink(missing_ok=True)
            try:
                suite.call(bench_argv(suite, run_mode, data, maskings, path, profile, extra))
            except StepFailed as exc:
                fig["errors"].append(f"{label}: {exc}")
            finally:
                rows, peak = read_bench(path)
                fig["rows"] += [slim_row(r, peak) for r in rows]
                if peak:
                    fig["peak_tflops"] = peak
                add_ratios(fig["rows"])
                fig["targets"] = check_targets(fig["rows"], mode)
                write_profiles(suite, fig)
    finally:
        missed = [t for t in fig["targets"] if not t["met"]]
        if missed:
            explain_misses(suite, fig, missed, mode)
    if fig["errors"]:
        raise StepFailed("; ".join(fig["errors"]))


def explain_misses(suite: Suite, fig: dict, missed: list[dict], mode: str) -> None:
    """Print where a step's time goes for the rows whose target is missed."""
    from bench_pretrain import profile_lines

    names = dict.fromkeys(n for t in missed for n in t["rows"])
    suite.say("targets missed: " + "; ".join(f"{t['target']} (measured {t['value']:.3g})" for t in missed))
    for name in names:
        row = find_row(fig["rows"], name, mode, "synthetic")
        for line in profile_lines(row) if row else []:
            suite.say(line)


def write_profiles(suite: Suite, fig: dict) -> None:
    """profile.md: every profiled row's parts and top kernels."""
    rows = [r for r in fig["rows"] if r.get("profile")]
    if not rows:
        return
    parts = [
        "# Where a training step's time goes",
        "",
        f"bench_pretrain.py --profile, {suite.args.device}, scale {suite.args.scale}. Parts: the eager pieces "
        "of the fastest of 5 eager steps timed part by part; their sum against the fastest of 5 eager steps "
        "timed whole; top "
        "kernels (operators on a CPU) by self time over 3 steps of the variant's own step (compiled if it "
        "is).",
        "",
    ]
    for row in rows:
        prof = row["profile"]
        parts.append(f"## {row['masking']}, {row['mode']}, {row['data']} data: {row['step_ms']:.2f} ms/step")
        if "error" in prof:
            parts += ["", f"no breakdown: {prof['error']}", ""]
            continue
        parts += [
            "",
            "| part | ms |",
            "|---|---|",
            *(f"| {k} | {v:.3f} |" for k, v in prof["parts_ms"].items()),
            f"| **sum** | {prof['parts_sum_ms']:.3f} |",
            f"| eager step timed whole | {prof['eager_step_ms']:.3f} |",
            "",
            "| share | ms per step | calls per step | kernel |",
            "|---|---|---|---|",
            *(
                f"| {k['share']:.1%} | {k['self_ms']:.3f} | {k['calls_per_step']:.1f} | `{k['name'][:120]}` |"
                for k in prof["top_kernels"]
            ),
            "",
        ]
    atomic_write_text(suite.out / "profile.md", "\n".join(parts))


# --- step 2: the ImageNet data path -----------------------------------------------------------------------------
def write_imagefolder(root: Path, images: int, classes: int, size: int, seed: int = 0) -> int:
    """root/train/<class>/*.jpg (`images`, the classes in turn) and root/val/<class>/*.jpg (2 a class): smooth
    seeded random colour fields, a base colour per class, saved by PIL as JPEG -> the training images written."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    bases = rng.integers(0, 256, (classes, 1, 1, 3))
    for split, n in (("train", images), ("val", 2 * classes)):
        for i in range(n):
            c = i % classes
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            field = (rng.integers(0, 256, (8, 8, 3)) + bases[c]) // 2
            image = Image.fromarray(field.astype(np.uint8)).resize((size, size), Image.BICUBIC)
            image.save(folder / f"{split}_{i:05d}.jpg", quality=90)
    return images


def check_images_read(read: dict | None, written: int) -> str | None:
    """None when every complete epoch (all but the last, which max_steps cuts) read each written image once, else
    what went wrong."""
    epochs = (read or {}).get("epochs", [])[:-1]
    if not epochs:
        return "no complete epoch to check (too few steps for the images written)"
    for e in epochs:
        if e["images"] != written or e["distinct"] != written:
            return f"epoch {e['epoch']} read {e['images']} images ({e['distinct']} distinct) of the {written} written"
    if (read or {}).get("dataset") not in (None, written):
        return f"the datamodule found {read['dataset']} training images, {written} were written"
    return None


def data_path(suite: Suite, fig: dict) -> None:
    s = suite.scale
    root = suite.work / "imagefolder"
    if not (root / "train").is_dir():
        write_imagefolder(root, s.images, s.classes, s.image_px)
    fig["images_written"], fig["image_px"] = s.images, s.image_px
    path = suite.work / "bench_data.json"
    path.unlink(missing_ok=True)
    mode = s.modes[0]
    argv = suite.python(
        "experiments/bench_pretrain.py",
        "--device",
        suite.args.device,
        *s.data_bench,
        "--channels",
        "3",
        "--variants",
        mode,
        "--data",
        "synthetic,real",
        "--masking",
        "random",
        "--json",
        str(path),
        "--override",
        *s.overrides,
        "dataset=imagenet",
        f"dataset.root={root}",
        "dataset.decode=auto",
        f"dataset.num_workers={s.workers}",
        "dataset.loader_timeout_s=60",
        f"dataset.num_classes={s.classes}",
    )
    try:
        suite.call(argv)
    finally:
        rows, peak = read_bench(path)
        rows = [slim_row(r, peak) for r in rows]
        synthetic, real = find_row(rows, "random", mode, "synthetic"), find_row(rows, "random", mode, "real")
        fig["mode"] = mode
        fig["synthetic_img_s"] = synthetic["img_s"] if synthetic else None
        fig["real_img_s"] = real["img_s"] if real else None
        if synthetic and real:
            fig["real_over_synthetic"] = real["img_s"] / synthetic["img_s"]
        if path.is_file():
            fig["loader_img_s"] = (json.loads(path.read_text()).get("loader") or {}).get("data_img_s")
        fig["images_read"] = real.get("images_read") if real else None
    problem = check_images_read(fig["images_read"], s.images)
    fig["no_drops"] = problem is None
    if problem:
        raise StepFailed(problem)


# --- step 3: no host sync ---------------------------------------------------------------------------------------
def pytest_counts(output: str) -> dict[str, int]:
    """pytest's closing line ("3 passed, 2 skipped in 4.1s") -> {"passed": 3, "skipped": 2}."""
    found = re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)\b", last_line(output))
    return {word.rstrip("s") if word.startswith("error") else word: int(n) for n, word in found}


def host_sync(suite: Suite, fig: dict) -> None:
    """On CUDA the gpu-marked tests (every strategy under sync-debug mode "error"); on a CPU their CPU part."""
    selection = "gpu" if suite.cuda else "not gpu"
    fig["selection"] = selection
    if not suite.cuda:
        fig["note"] = "skipped: no CUDA (the CPU part ran: host reads counted in training steps)"
    argv = suite.python(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", selection, "tests/tasks/test_step_sync.py"
    )
    try:
        output = suite.call(argv)
    except StepFailed as exc:
        fig.update(pytest_counts(str(exc)))
        raise
    fig.update(pytest_counts(output))
    if not fig.get("passed"):
        raise StepFailed(f"no test passed: {last_line(output)}")


# --- step 4: the readings at ViT-T scale ------------------------------------------------------------------------
def load_study(name: str):
    """experiments/semantic_vs_random/<name>.py as a module (run.py needs hydra: import it after the wheels)."""
    if str(STUDY) not in sys.path:
        sys.path.insert(0, str(STUDY))
    return __import__(name)


def readings_argv(suite: Suite, budget_min: float | None, report_only: bool = False) -> list[str]:
    argv = suite.python(
        str(STUDY.relative_to(REPO) / "run.py"),
        "--preset",
        suite.scale.preset,
        "--out",
        str(suite.work / "readings"),
        "--data-root",
        str(suite.fmnist),
        "--results",
        str(suite.out / "RESULTS.md"),
    )
    if report_only:
        return argv + ["--report-only"]
    return argv + (["--budget-min", f"{budget_min:.2f}"] if budget_min is not None else [])


def readings(suite: Suite, fig: dict) -> None:
    if not fmnist_present(suite.fmnist):
        raise StepSkipped(f"skipped: no Fashion-MNIST in {suite.fmnist} (--fmnist)")
    report_by = suite.deadline - suite.scale.reserve_s / 2  # run.py is stopped here at the latest: time for a report
    budget_min = (report_by - suite.scale.reserve_s / 2 - time.monotonic()) / 60
    if budget_min <= 0:
        raise StepSkipped("skipped: no time left to start a task")
    results = suite.out / "RESULTS.md"
    results.unlink(missing_ok=True)
    try:
        suite.call(readings_argv(suite, budget_min), until=report_by)
    finally:
        if not results.is_file():  # cut short: the report of what finished
            try:
                suite.call(readings_argv(suite, None, report_only=True))
            except (StepFailed, StepTimeout) as exc:
                fig["report_error"] = str(exc)
        collect_readings(suite, fig)
        pack_extras(suite.out)
    if not fig["section"]:
        raise StepFailed("RESULTS.md has no `gpu` section")
    unfinished = [a for a, v in fig["arms"].items() if v["tasks_done"] < v["tasks"]]
    if unfinished:
        raise StepFailed(f"arms not finished: {', '.join(unfinished)}")


def collect_readings(suite: Suite, fig: dict) -> None:
    """Per arm: the cell's numbers (report.cell_values) and how many of its tasks finished; the section written."""
    report, run = load_study("report"), load_study("run")
    study = suite.work / "readings"
    fig["arms"] = {}
    for arm in run.PRESETS[suite.scale.preset].strategies:
        cell = study / arm / "seed0"
        done = [t for t in run.READINGS_TASKS if (cell / t / "results.json").is_file()]
        fig["arms"][arm] = {
            "tasks_done": len(done),
            "tasks": len(run.READINGS_TASKS),
            **(report.cell_values(cell) if done else {}),
        }
    text = (suite.out / "RESULTS.md").read_text() if (suite.out / "RESULTS.md").is_file() else ""
    heading = next((ln for ln in text.splitlines() if ln.startswith("## gpu: ")), None)
    fig["results_md"] = "RESULTS.md" if text else None
    fig["section"] = heading[3:] if heading else None
    fig["outcome"] = next((ln for ln in text.splitlines() if ln.startswith("Outcome: ")), None)


# --- step 5: the probes -----------------------------------------------------------------------------------------
def probing_heads(suite: Suite) -> bool:
    """semmae-linprobe accepts model.head=ep and model.head=knn: each composes (hydra's --cfg job, nothing runs)."""
    for head in PROBE_HEADS:
        try:
            suite.call(suite.python("-m", "semmae.linprobe", f"model.head={head}", "--cfg", "job"))
        except StepFailed:
            return False
    return True


def probe_argv(suite: Suite, arm: str, head: str) -> list[str]:
    run = load_study("run")
    ckpt = suite.work / "readings" / arm / "seed0" / "pretrain" / "checkpoints" / "last.ckpt"
    run_dir = suite.work / "probes" / arm / head
    return suite.python(
        "-m",
        "semmae.linprobe",
        *run.PRESETS[suite.scale.preset].overrides("linprobe"),
        f"dataset.root={suite.fmnist}",
        f"ckpt={ckpt}",
        f"model.head={head}",
        "seed=0",
        "overwrite=true",
        f"hydra.run.dir={run_dir}",
    )


def top1(run_dir: Path) -> float | None:
    path = run_dir / "results.json"
    metrics = json.loads(path.read_text()).get("metrics", {}) if path.is_file() else {}
    return metrics.get("test/top1", metrics.get("val/top1"))


def probes(suite: Suite, fig: dict) -> None:
    if not probing_heads(suite):
        raise StepSkipped(
            f"skipped: probing heads not available (semmae-linprobe does not accept model.head={'/'.join(PROBE_HEADS)})"
        )
    study = suite.work / "readings"
    arms = [
        a
        for a in load_study("run").PRESETS[suite.scale.preset].strategies
        if (study / a / "seed0" / "pretrain" / "results.json").is_file()
    ]
    if not arms:
        raise StepSkipped("skipped: no finished pretraining of step 4 to probe")
    fig["top1"] = {a: {"linear": top1(study / a / "seed0" / "linprobe")} for a in arms}
    errors = []
    for arm in arms:
        for head in PROBE_HEADS:
            try:
                suite.call(probe_argv(suite, arm, head))
            except StepFailed as exc:
                errors.append(f"{arm} {head}: {exc}")
            fig["top1"][arm][head] = top1(suite.work / "probes" / arm / head)
    if errors:
        raise StepFailed("; ".join(errors))


# --- the steps and their summary lines --------------------------------------------------------------------------
def fmt(value, spec: str = ".0f", none: str = "—") -> str:
    return none if value is None else format(value, spec)


def throughput_lines(fig: dict) -> tuple[str, list[str]]:
    rows, targets = fig.get("rows", []), fig.get("targets", [])
    head = "; ".join(f"{t['target']}: {fmt(t['value'], '.3g')} {'met' if t['met'] else 'MISSED'}" for t in targets)
    lines = [f"- {note}" for note in fig.get("notes", [])]
    lines += ["| masking | mode | data | img/s | ms/step | MFU | x random | GiB |", "|---|---|---|---|---|---|---|---|"]
    lines += [
        f"| {r['masking']} | {r['mode']} | {r['data']} | {fmt(r['img_s'])} | {fmt(r['step_ms'], '.1f')} | "
        f"{fmt(r.get('mfu'), '.3f')} | {fmt(r.get('x_random'), '.3f')} | {fmt(r.get('peak_mem_gib'), '.1f')} |"
        for r in rows
    ]
    missed = [t for t in targets if not t["met"]]
    if missed:
        lines += ["", "Targets missed; where the time goes (eager parts, ms; the top kernels are in profile.md):"]
        names = dict.fromkeys(n for t in missed for n in t["rows"])
        for r in rows:
            prof = r.get("profile") or {}
            if r["masking"] in names and r["data"] == "synthetic" and "parts_ms" in prof:
                lines.append(
                    f"- {r['masking']} ({r['mode']}): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in prof["parts_ms"].items())
                    + f"; sum {prof['parts_sum_ms']:.2f} of {prof['eager_step_ms']:.2f} timed whole"
                )
    return head or "no row measured", lines


def data_lines(fig: dict) -> tuple[str, list[str]]:
    head = (
        f"{fig.get('mode', '')} real {fmt(fig.get('real_img_s'))} img/s vs synthetic "
        f"{fmt(fig.get('synthetic_img_s'))} ({fmt(fig.get('real_over_synthetic'), '.2f')}x); "
        f"{fig.get('images_written')} JPEGs, "
        + ("each read once per epoch" if fig.get("no_drops") else "NOT each read once per epoch")
    )
    read = fig.get("images_read") or {}
    lines = [
        f"- ImageFolder of {fig.get('images_written')} JPEGs at {fig.get('image_px')} px, dataset.decode=auto, "
        f"DataLoader workers; the loader alone: {fmt(fig.get('loader_img_s'))} img/s",
        "- images read per epoch (images / distinct): "
        + ", ".join(f"{e['images']}/{e['distinct']}" for e in read.get("epochs", []))
        + " (the last epoch is cut short)",
    ]
    return head, lines


def sync_lines(fig: dict) -> tuple[str, list[str]]:
    counts = ", ".join(f"{fig[k]} {k}" for k in ("passed", "failed", "error", "skipped", "deselected") if fig.get(k))
    head = f"-m {fig.get('selection')}: {counts or 'no count'}" + (f"; {fig['note']}" if fig.get("note") else "")
    return head, []


def readings_lines(fig: dict) -> tuple[str, list[str]]:
    arms = fig.get("arms", {})
    done = sum(v["tasks_done"] == v["tasks"] for v in arms.values())
    head = f"{done} of {len(arms)} arms finished; RESULTS.md section: {fig.get('section') or 'none'}"
    lines = [
        "| arm | tasks | probe CLS % | fine-tune end: sink ratio | pretrained: sink ratio | prefix share |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {a} | {v['tasks_done']}/{v['tasks']} | {fmt(v.get('linprobe') and 100 * v['linprobe'], '.1f')} | "
        f"{fmt(v.get('ft_end/sink_ratio'), '.2f')} | {fmt(v.get('analyze/sink_ratio'), '.2f')} | "
        f"{fmt(v.get('analyze/prefix_share'), '.3f')} |"
        for a, v in arms.items()
    ]
    lines += [f"- {fig['outcome']}"] if fig.get("outcome") else []
    return head, lines


def probes_lines(fig: dict) -> tuple[str, list[str]]:
    top = fig.get("top1", {})
    lines = ["| arm | linear % | EP % | k-NN % |", "|---|---|---|---|"] + [
        f"| {a} | " + " | ".join(fmt(v.get(h) and 100 * v[h], ".1f") for h in ("linear", "ep", "knn")) + " |"
        for a, v in top.items()
    ]
    return f"{len(top)} arms probed", lines if top else []


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[Suite, dict], None]
    lines: Callable[[dict], tuple[str, list[str]]]  # its summary: the headline and the section's lines
    est_s: dict[str, float]  # per scale (full: one H200, tiny: 2 CPU cores): the least time it is started with
    timeout_s: dict[str, float | None]  # per scale; None: whatever the budget leaves


STEPS = (
    Step(
        "throughput",
        "Throughput (bench_pretrain.py)",
        throughput,
        throughput_lines,
        {"full": 150, "tiny": 60},
        {"full": 200, "tiny": 600},
    ),
    Step("data", "The ImageNet data path", data_path, data_lines, {"full": 50, "tiny": 30}, {"full": 120, "tiny": 300}),
    Step("sync", "No host sync", host_sync, sync_lines, {"full": 40, "tiny": 30}, {"full": 120, "tiny": 400}),
    Step(
        "readings",
        "The readings at ViT-T scale",
        readings,
        readings_lines,
        {"full": 150, "tiny": 120},
        {"full": None, "tiny": None},
    ),
    Step("probes", "The probes", probes, probes_lines, {"full": 20, "tiny": 10}, {"full": 120, "tiny": 300}),
)
STEP_NAMES = tuple(s.name for s in STEPS)


# --- summary ----------------------------------------------------------------------------------------------------
def read_summary(out: Path) -> dict:
    path = out / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def record(out: Path, **fields) -> dict:
    """Re-read summary.json, merge fields into it (steps entry by entry), write it and summary.md atomically."""
    summary = read_summary(out)
    steps = fields.pop("steps", {})
    summary.update(fields)
    summary.setdefault("steps", {}).update(steps)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", render(summary))
    return summary


def render(summary: dict) -> str:
    """summary.md: the device and versions, one line a step, then each step's figures."""
    env, suite, setup = summary.get("env", {}), summary.get("suite", {}), summary.get("setup", {})
    memory = f", {env['memory_gib']} GiB" if env.get("memory_gib") else ""
    installed = setup.get("installed")
    wheels = (
        f"installed {', '.join(installed)} into {setup.get('target')}"
        if installed
        else "hydra-core and omegaconf present, no wheels installed"
    )
    parts = [
        f"# GPU suite: {env.get('device', '?')}{memory}",
        "",
        f"{env.get('date', '')} · torch {env.get('torch')} (CUDA {env.get('cuda')}) · timm {env.get('timm')} · "
        f"lightning {env.get('lightning')} · Python {env.get('python')} · scale {suite.get('scale')} · "
        f"budget {fmt(suite.get('budget_s'))} s · wall {fmt(suite.get('wall_s'))} s",
        "",
        f"Setup: {wheels}.",
        "",
        "| step | status | wall s | result |",
        "|---|---|---|---|",
    ]
    by_name = {s.name: s for s in STEPS}
    steps = summary.get("steps", {})
    sections = []
    for name, entry in steps.items():
        head, lines = by_name[name].lines(entry.get("figures", {})) if name in by_name else ("", [])
        result = head if entry["status"] == "ok" else entry.get("reason", "")
        if entry["status"] in ("failed", "timeout") and head:
            result += f"; {head}"
        parts.append(f"| {name} | {entry['status']} | {fmt(entry.get('wall_s'))} | {result} |")
        if lines and entry["status"] != "skipped":
            sections += ["", f"## {by_name[name].title}", "", *lines]
    return "\n".join(parts + sections) + "\n"


def pack_extras(out: Path) -> None:
    """Move every file under out but OUT_FILES into out/extras.tar (paths kept), so that at most 8 files come back."""
    extra = sorted(
        p
        for p in out.rglob("*")
        if p.is_file() and p.relative_to(out).as_posix() not in OUT_FILES and not p.name.startswith(".")
    )
    if not extra:
        return
    tar_path = out / "extras.tar"

    def write(fh):
        with tarfile.open(fileobj=fh, mode="w") as tar:
            if tar_path.is_file():
                with tarfile.open(tar_path) as old:
                    for member in old.getmembers():
                        tar.addfile(member, old.extractfile(member))
            for path in extra:
                tar.add(path, arcname=path.relative_to(out).as_posix())

    atomic_write(tar_path, write)
    for path in extra:
        path.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()


# --- main -------------------------------------------------------------------------------------------------------
def run_step(suite: Suite, step: Step) -> dict:
    """Run one step under its deadline -> its summary entry (status ok | failed | timeout | skipped)."""
    left, scale = suite.remaining(), suite.args.scale
    if left < step.est_s[scale]:
        return {
            "status": "skipped",
            "wall_s": 0.0,
            "figures": {},
            "commands": [],
            "reason": f"skipped: needs ~{step.est_s[scale]:.0f} s, {max(0.0, left):.0f} s of --budget-s left",
        }
    limit = step.timeout_s[scale]
    timeout = left if limit is None else min(limit, left)
    suite.deadline = time.monotonic() + timeout
    suite.commands = []
    fig: dict = {}
    t0 = time.monotonic()
    status, reason = "ok", None
    try:
        step.run(suite, fig)
    except StepSkipped as exc:
        status, reason = "skipped", str(exc)
    except StepTimeout as exc:
        status, reason = "timeout", f"timeout after {timeout:.0f} s: {exc}"
    except StepFailed as exc:
        status, reason = "failed", str(exc)
    except Exception as exc:  # noqa: BLE001  (a bug of this script: record it, go on with the next step)
        status, reason = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
        with open(suite.log, "a") as log:
            log.write(traceback.format_exc())
    entry = {"status": status, "wall_s": round(time.monotonic() - t0, 1), "figures": fig, "commands": suite.commands}
    if reason:
        entry["reason"] = reason
    return entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available, else cpu")
    p.add_argument(
        "--scale",
        choices=tuple(SCALES),
        default=None,
        help="full (ViT-B/16, the GPU presets) or tiny (seconds per step on a CPU); default: full on\n"
        "cuda, tiny on cpu",
    )
    p.add_argument(
        "--out",
        default=os.environ.get("OUT") or "outputs/gpu_suite",
        help="where the summary and logs go (default: $OUT, else outputs/gpu_suite)",
    )
    p.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "semmae_gpu_suite"),
        help="models, studies and data (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        nargs="+",
        choices=STEP_NAMES,
        default=list(STEP_NAMES),
        help="the steps to run, in the suite's order (default: all)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip a step that would not fit in what is left of this (default: 570 at full scale,\n3600 tiny)",
    )
    p.add_argument("--fmnist", default=FMNIST, help="the Fashion-MNIST IDX files (default: %(default)s)")
    p.add_argument(
        "--wheels",
        default=str(REPO / ".whl"),
        help="wheels of hydra-core, omegaconf, antlr4 (device-wheels.sh), installed where missing",
    )
    p.add_argument(
        "--target",
        default=str(Path(tempfile.gettempdir()) / "semmae_site"),
        help="where those wheels are installed (default: %(default)s)",
    )
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device is visible to torch")
    args.scale = args.scale or ("full" if args.device == "cuda" else "tiny")
    args.budget_s = args.budget_s if args.budget_s is not None else SCALES[args.scale].budget_s
    if args.budget_s <= 0:
        p.error(f"--budget-s must be positive, got {args.budget_s:g}")
    args.steps = [name for name in STEP_NAMES if name in args.steps]
    for key in ("out", "work", "fmnist", "wheels", "target"):  # the commands run from the repository root
        setattr(args, key, str(Path(getattr(args, key)).resolve()))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    setup = prepare_imports(Path(args.wheels), Path(args.target))
    suite = Suite(args, subprocess_env(setup["target"]))
    invocation = ["python", "experiments/gpu_suite.py", *(argv if argv is not None else sys.argv[1:])]
    env = environment(args.device)
    record(
        out,
        suite={
            "argv": invocation,
            "device": args.device,
            "scale": args.scale,
            "budget_s": args.budget_s,
            "steps": args.steps,
            "finished": None,
        },
        env=env,
        setup=setup,
    )
    suite.say(
        f"gpu_suite: {env['device']} | torch {env['torch']} | scale {args.scale} | budget {args.budget_s:.0f} s"
        + (f" | installed {len(setup['installed'])} wheels into {setup['target']}" if setup["installed"] else "")
    )
    by_name = {s.name: s for s in STEPS}
    for name in args.steps:
        step = by_name[name]
        suite.say(f"[{name}] {step.title} ({suite.remaining():.0f} s of the budget left)")
        entry = run_step(suite, step)
        record(out, steps={name: entry})
        pack_extras(out)
        head, _ = step.lines(entry["figures"])
        if entry["status"] == "skipped":
            suite.say(f"[{name}] {entry['reason']}")
        else:
            suite.say(f"[{name}] {entry['status']} in {entry['wall_s']:.0f} s: {entry.get('reason') or head}")
    summary = record(
        out,
        suite={
            **read_summary(out)["suite"],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wall_s": round(time.monotonic() - suite.start, 1),
        },
    )
    print("\n" + (out / "summary.md").read_text(), flush=True)
    bad = [n for n, e in summary["steps"].items() if n in args.steps and e["status"] in ("failed", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
