"""The GPU suite (experiments/gpu_suite.py): the summary is re-read and extended step by step, the wheels are installed
only where a module is missing, a step that times out is recorded and the next one runs, a step that does not fit is
skipped, the checks of its steps hold; and the whole suite runs end to end on a CPU in its tiny configuration, every
file it writes read back."""

import base64
import hashlib
import importlib.util
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "experiments" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


suite = load_suite()


def entry(status="ok", **figures):
    return {"status": status, "wall_s": 1.0, "figures": figures, "commands": []}


def test_summary_is_reread_and_extended_after_each_step(tmp_path):
    suite.record(tmp_path, suite={"scale": "tiny", "budget_s": 60}, env={"device": "cpu-x", "torch": "2.x"})
    suite.record(tmp_path, steps={"sync": entry(selection="not gpu", passed=3)})
    (tmp_path / "summary.json").write_text(  # another writer's field survives: the file is re-read, not kept
        json.dumps({**json.loads((tmp_path / "summary.json").read_text()), "note": "kept"})
    )
    suite.record(tmp_path, steps={"probes": {**entry("skipped"), "reason": "skipped: probing heads not available"}})
    suite.record(tmp_path, steps={"sync": entry("failed", selection="gpu", passed=1, failed=2)})  # a rerun replaces
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["steps"]) == ["sync", "probes"] and summary["note"] == "kept"
    assert summary["steps"]["sync"]["figures"]["failed"] == 2 and summary["env"]["device"] == "cpu-x"
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# GPU suite: cpu-x\n")
    assert "| sync | failed | 1 | ; -m gpu: 1 passed, 2 failed |" in md
    assert "| probes | skipped | 1 | skipped: probing heads not available |" in md
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp file


def make_wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel of a package `name` (one module file), valid for pip."""
    files = {
        f"{name}/__init__.py": b"VALUE = 27\n",
        f"{name}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{name}-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = [
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
        for p, d in files.items()
    ] + [f"{name}-0.1.dist-info/RECORD,,"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{name}-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_wheels_are_installed_only_when_a_needed_module_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    wheels, target = tmp_path / "whl", tmp_path / "site"
    assert suite.prepare_imports(wheels, target) == {"missing": [], "installed": [], "target": None}  # hydra is here
    fake = "semmae_gpu_suite_fake_dep"
    monkeypatch.setattr(suite, "NEEDED", ("hydra", fake))  # as on the GPU machine: a needed module is missing
    with pytest.raises(
        SystemExit,
        match=f"{fake} not importable and no wheels in {wheels}: run `bash "
        r"\.\./shared/tools/device-wheels\.sh`",
    ):
        suite.prepare_imports(wheels, target)
    make_wheel(wheels, fake)
    setup = suite.prepare_imports(wheels, target)
    assert setup == {"missing": [fake], "installed": [f"{fake}-0.1-py3-none-any.whl"], "target": str(target)}
    assert (target / fake / "__init__.py").is_file() and suite.missing_modules() == []
    env = suite.subprocess_env(setup["target"])
    assert env["PYTHONPATH"].split(":")[:2] == [str(REPO), str(target)]  # the repository's semmae wins
    out = subprocess.run(
        [sys.executable, "-c", f"import {fake}; print({fake}.VALUE)"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip() == "27", out.stderr
    sys.modules.pop(fake, None)


def fake_steps(monkeypatch, steps):
    monkeypatch.setattr(suite, "STEPS", tuple(steps))
    monkeypatch.setattr(suite, "STEP_NAMES", tuple(s.name for s in steps))


def test_a_step_that_times_out_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch, capsys):
    def hang(s, fig):
        fig["started"] = True
        s.call(["sleep", "600"])

    def after(s, fig):
        fig["printed"] = s.call([sys.executable, "-c", "print('after the hang')"]).strip()

    lines = lambda fig: (json.dumps(fig, sort_keys=True), [])  # noqa: E731
    fake_steps(
        monkeypatch,
        [
            suite.Step("hang", "Hangs", hang, lines, {"tiny": 0}, {"tiny": 3}),
            suite.Step("after", "Runs after", after, lines, {"tiny": 0}, {"tiny": 60}),
            suite.Step("huge", "Does not fit", after, lines, {"tiny": 10_000}, {"tiny": 60}),
        ],
    )
    out = tmp_path / "out"
    code = suite.main(["--device", "cpu", "--out", str(out), "--work", str(tmp_path / "work"), "--budget-s", "300"])
    assert code == 1  # a step timed out
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert steps["hang"]["status"] == "timeout" and steps["hang"]["figures"] == {"started": True}
    assert steps["hang"]["reason"].startswith("timeout after 3 s: stopped at the step's deadline: sleep 600")
    assert steps["hang"]["wall_s"] < 60  # the sleep was stopped, not waited for
    assert steps["after"]["status"] == "ok" and steps["after"]["figures"] == {"printed": "after the hang"}
    assert steps["huge"]["status"] == "skipped"
    assert (
        steps["huge"]["reason"].startswith("skipped: needs ~10000 s, ")
        and "of --budget-s left" in steps["huge"]["reason"]
    )
    assert summary["suite"]["finished"] and summary["env"]["torch"]
    log = (out / "suite.log").read_text()
    assert "$ sleep 600" in log and "after the hang" in log and "[huge] skipped: needs ~10000 s" in log
    assert "| hang | timeout |" in capsys.readouterr().out  # summary.md is printed at the end
    assert sorted(p.name for p in out.iterdir()) == ["suite.log", "summary.json", "summary.md"]


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    for argv, message in (
        (["--device", "cpu", "--budget-s", "0"], "--budget-s must be positive, got 0"),
        (["--steps", "nosuch"], "argument --steps: invalid choice: 'nosuch'"),
    ):
        with pytest.raises(SystemExit) as exc:
            suite.parse_args(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    args = suite.parse_args(["--device", "cpu", "--steps", "probes", "throughput"])
    assert args.steps == ["throughput", "probes"] and args.scale == "tiny" and args.budget_s == 3600


def test_every_epoch_must_read_each_written_image_once():
    ok = {
        "dataset": 24,
        "epochs": [
            {"epoch": 0, "images": 24, "distinct": 24},
            {"epoch": 1, "images": 24, "distinct": 24},
            {"epoch": 2, "images": 8, "distinct": 8},
        ],
    }
    assert suite.check_images_read(ok, 24) is None
    dropped = {**ok, "epochs": [{"epoch": 0, "images": 24, "distinct": 23}, *ok["epochs"][1:]]}
    assert suite.check_images_read(dropped, 24) == "epoch 0 read 24 images (23 distinct) of the 24 written"
    assert (
        suite.check_images_read({**ok, "dataset": 23}, 24) == "the datamodule found 23 training images, 24 were written"
    )
    assert suite.check_images_read({"epochs": ok["epochs"][:1]}, 24).startswith("no complete epoch")
    assert suite.check_images_read(None, 24).startswith("no complete epoch")


def test_targets_and_ratios_are_read_from_the_rows():
    rows = [
        {"masking": "random", "mode": "compiled", "data": "synthetic", "img_s": 6100.0, "step_ms": 42.0, "mfu": 0.46},
        {"masking": "semantic", "mode": "compiled", "data": "synthetic", "img_s": 5800.0, "step_ms": 44.1, "mfu": 0.44},
        {"masking": "semantic", "mode": "eager", "data": "synthetic", "img_s": 1.0, "step_ms": 1.0, "mfu": 0.0},
    ]
    suite.add_ratios(rows)
    assert rows[1]["x_random"] == pytest.approx(1.05) and rows[2]["x_random"] is None
    checks = suite.check_targets(rows, "compiled")
    assert [(c["target"], c["met"]) for c in checks] == [
        ("random img/s >= 6000", True),
        ("random MFU >= 0.45", True),
        ("semantic step <= 1.03x random", False),
    ]


def test_pytest_counts_and_extras_packing(tmp_path):
    assert suite.pytest_counts("x\n9 passed, 9 skipped, 3 deselected, 12 warnings in 27.79s\n") == {
        "passed": 9,
        "skipped": 9,
        "deselected": 3,
    }
    assert suite.pytest_counts("exit 1: 1 failed, 2 passed, 1 error in 3s") == {"failed": 1, "passed": 2, "error": 1}
    (tmp_path / "figures" / "gpu").mkdir(parents=True)
    for name in ("summary.json", "RESULTS.md", "figures/gpu/a.png", "figures/gpu/b.png", "stray.txt"):
        (tmp_path / name).write_text(name)
    suite.pack_extras(tmp_path)
    (tmp_path / "figures" / "gpu").mkdir(parents=True)
    (tmp_path / "figures" / "gpu" / "c.png").write_text("c")
    suite.pack_extras(tmp_path)  # a second step's files join the first's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "extras.tar", "summary.json"]
    with tarfile.open(tmp_path / "extras.tar") as tar:
        assert sorted(tar.getnames()) == ["figures/gpu/a.png", "figures/gpu/b.png", "figures/gpu/c.png", "stray.txt"]
        assert tar.extractfile("figures/gpu/b.png").read() == b"figures/gpu/b.png"


def test_a_probe_command_is_the_readings_linear_probe_with_a_head(tmp_path):
    from tests.conftest import compose

    args = suite.parse_args(
        ["--device", "cpu", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), "--fmnist", "/data/fmnist"]
    )
    argv = suite.probe_argv(suite.Suite(args, {}), "semantic", "knn")
    assert argv[1:3] == ["-m", "semmae.linprobe"] and "model.head=knn" in argv
    overrides = [a for a in argv[3:] if not a.startswith("hydra.run.dir=")]
    cfg = compose("linprobe", overrides, tmp_path / "cfg")
    assert cfg.ckpt == str(
        tmp_path / "w" / "readings" / "semantic" / "seed0" / "pretrain" / "checkpoints" / "last.ckpt"
    )
    assert cfg.dataset.root == "/data/fmnist" and cfg.backbone.embed_dim == 32  # gpu-suite-tiny's probe


def returned_files(out: Path) -> list[Path]:
    """What the device tool brings back from $OUT: files at most 2 folders down."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(len(p.relative_to(out).parts) <= 3 for p in files), files
    return files


@pytest.mark.slow
def test_the_whole_suite_runs_on_a_cpu_in_its_tiny_configuration(tmp_path, fmnist_root, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    code = suite.main(
        ["--device", "cpu", "--scale", "tiny", "--out", str(out), "--work", str(work), "--fmnist", str(fmnist_root)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    files = returned_files(out)
    assert sorted(p.name for p in files) == sorted(suite.OUT_FILES) and len(files) <= 8

    summary = json.loads((out / "summary.json").read_text())
    assert summary["suite"]["scale"] == "tiny" and summary["suite"]["finished"] and summary["setup"]["installed"] == []
    assert summary["env"]["torch"] and summary["env"]["timm"] and summary["env"]["lightning"]
    steps = summary["steps"]
    assert list(steps) == list(suite.STEP_NAMES)
    assert {n: e["status"] for n, e in steps.items()} == {
        "throughput": "ok",
        "data": "ok",
        "sync": "ok",
        "readings": "ok",
        "probes": "ok",
    }
    log = (out / "suite.log").read_text()
    for e in steps.values():  # every command is in the log
        assert all(f"$ {c}\n" in log for c in e["commands"])

    fig = steps["throughput"]["figures"]
    measured = {(r["masking"], r["data"]) for r in fig["rows"]}
    assert measured == {
        ("random", "synthetic"),
        ("semantic", "synthetic"),
        ("random", "real"),
        ("semantic", "real"),
        *((m, "synthetic") for m in suite.READINGS),
    }
    assert all(r["img_s"] > 0 and r["mode"] == "eager" for r in fig["rows"])
    assert [t["met"] for t in fig["targets"]][:2] == [False, False]  # a CPU misses the GPU's targets: the breakdown
    assert "targets missed: random img/s >= 6000" in printed and "where an eager step's time goes" in printed
    for r in fig["rows"]:
        if r["masking"] in ("random", "semantic") and r["data"] == "synthetic":
            assert set(r["profile"]["parts_ms"]) == {"masking", "encoder", "decoder", "loss", "backward", "optimizer"}
    profile = (out / "profile.md").read_text()
    assert profile.count("| **sum** |") == 2 + len(suite.READINGS) and "aten::" in profile

    fig = steps["data"]["figures"]
    assert fig["no_drops"] and fig["images_written"] == 24 and fig["real_img_s"] > 0 and fig["synthetic_img_s"] > 0
    assert [e["images"] for e in fig["images_read"]["epochs"]][:2] == [24, 24]
    assert len(list((work / "imagefolder" / "train").rglob("*.jpg"))) == 24

    fig = steps["sync"]["figures"]
    assert fig["selection"] == "not gpu" and fig["passed"] >= 10 and not fig.get("failed")

    fig = steps["readings"]["figures"]
    assert list(fig["arms"]) == ["random", "random_registers", "semantic", "semantic_features"]
    cell_tasks = len(suite.load_study("run").READINGS_TASKS)  # EP and k-NN among them
    assert all(v["tasks_done"] == v["tasks"] == cell_tasks and v["linprobe"] is not None for v in fig["arms"].values())
    results = (out / "RESULTS.md").read_text()
    heading = next(ln for ln in results.splitlines() if ln.startswith("## gpu: "))
    assert heading.startswith("## gpu: preset `gpu-suite-tiny` on ") and "(no GPU)" in heading
    assert results.count("<!-- BEGIN gpu (written by run.py) -->") == 1 and "| random_registers | 1 |" in results
    with tarfile.open(out / "extras.tar") as tar:
        figures = [n for n in tar.getnames() if n.startswith("figures/gpu/")]
        assert "figures/gpu/attention_random.png" in figures
        assert all(tar.extractfile(n).read(8) == b"\x89PNG\r\n\x1a\n" for n in figures)
    for name in figures:  # RESULTS.md links the figures by the paths the tar restores
        if name.endswith("attention_random.png"):
            assert f"]({name})" in results

    top1 = steps["probes"]["figures"]["top1"]
    assert list(top1) == list(fig["arms"])  # every arm of step 4, each head's test accuracy read back
    assert all(0.0 <= v[h] <= 1.0 for v in top1.values() for h in ("linear", *suite.PROBE_HEADS))
    md = (out / "summary.md").read_text()
    assert md in printed
    for title in ("## Throughput", "## The ImageNet data path", "## The readings at ViT-T scale"):
        assert title in md
    assert "| probes | ok |" in md and "| readings | ok |" in md and "## The probes" in md
