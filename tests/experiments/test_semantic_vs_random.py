"""The replication study's runner (experiments/semantic_vs_random): every command of every preset composes, the
aggregation is mean ± sample std with failures shown as such, and the smoke preset runs end to end on the fixture
Fashion-MNIST, writes every task's results.json and RESULTS.md, and reruns nothing the second time."""

import importlib.util
import json
import os
import re
import statistics
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose

HERE = Path(__file__).resolve().parents[2] / "experiments" / "semantic_vs_random"


def load(name):
    spec = importlib.util.spec_from_file_location(f"svr_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run = load("run")
report = load("report")


@pytest.mark.parametrize(
    "preset,extra",
    [
        ("smoke", ["--data-root", "/data/fmnist"]),
        ("cpu", []),
        ("cpu", ["--ablation"]),
        ("cpu-long", []),
        ("gpu", []),
        ("gpu", ["--ablation"]),
        ("paper", ["--data-root", "/data/imagenet", "--seg-root", "/data/ade", "--set", "train:trainer.devices=8"]),
    ],
)
def test_every_command_composes(tmp_path, preset, extra):
    args = run.parse_args(["--preset", preset, "--seeds", "1", "--out", str(tmp_path / "study"), *extra])
    jobs = run.plan(args)
    tasks = run.ABLATION_TASKS if "--ablation" in extra or preset == "cpu-long" else run.TASKS
    strategies = ["random", "semantic", "block"] + (["semantic_flat_last"] if preset == "cpu-long" else [])
    assert sorted(args.strategies) == sorted(strategies)
    cells = len(run.ABLATION) if "--ablation" in extra else len(strategies)
    floor = [] if "--ablation" in extra or preset == "cpu-long" else list(run.FLOOR_TASKS)
    assert [j.task for j in jobs] == floor + list(tasks) * cells  # the floor first: a study cut short still has it
    if "--ablation" in extra:  # the variants differ in pretraining only: compose those and one cell's other tasks
        jobs = [j for j in jobs if j.task == "pretrain" or j.cell == jobs[0].cell]
    for job in jobs:
        assert job.argv[1:3] == ["-m", f"semmae.{job.task}"]
        overrides = [a for a in job.argv[3:] if not a.startswith("hydra.run.dir=")]
        keys = [o.split("=", 1)[0] for o in overrides]
        assert len(keys) == len(set(keys)), overrides
        assert job.argv[-1] == f"hydra.run.dir={job.run_dir}"
        cfg = compose(job.task, overrides, tmp_path / "cfg")
        assert cfg.seed == 1
        root = (
            "/data/ade"
            if preset == "paper" and job.task == "segment"
            else {"smoke": "/data/fmnist", "paper": "/data/imagenet"}.get(preset, run.FMNIST)
        )
        assert cfg.dataset.root == root
        if job.task == "pretrain":
            masking = OmegaConf.to_container(cfg.masking)
            name = job.cell.split("/")[-1]
            if "--ablation" not in extra:  # the strategy wins over an experiment preset's masking
                strategy = job.cell.split("/")[0]
                assert masking["_target_"].endswith(
                    {
                        "random": "RandomMasking",
                        "semantic": "SemanticMasking",
                        "semantic_flat_last": "SemanticMasking",
                        "block": "BlockMasking",
                    }[strategy]
                )
                assert masking.get("flat_last", False) is (strategy == "semantic_flat_last")
                if preset == "cpu-long":  # the longer run: all images, sinks measured every epoch
                    assert cfg.dataset.train_subset is None and cfg.trainer.max_epochs == 10
                    assert cfg.callbacks.attention_maps.every_n_epochs == 1
            elif name == "flat_last_threshold_0.3":
                assert masking["flat_last"] is True and masking["flat_threshold"] == 0.3
            elif name == "semantic" and preset == "cpu":  # the ablation's own data size replaces the study's
                assert cfg.dataset.train_subset == 12000
            elif name == "segmenter_given":
                assert masking["segmenter"] == "given" and cfg.dataset.segments == "foreground"
        elif job.cell.startswith(run.FLOOR):
            assert cfg.ckpt == ("random" if job.task == "analyze" else None)
        else:
            assert cfg.ckpt == str(job.run_dir.parent / "pretrain" / "checkpoints" / "last.ckpt")
        if preset == "paper" and job.task != "analyze":
            assert cfg.trainer.devices == 8


def fake_task(run_dir: Path, metrics=None, error=None, wall=10.0, artifacts=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "runner.json").write_text(
        json.dumps({"command": f"cmd {run_dir.name}", "wall_s": wall, **({"error": error} if error else {})})
    )
    if metrics is not None:
        (run_dir / "results.json").write_text(json.dumps({"metrics": metrics}))
    if artifacts is not None:
        (run_dir / "artifacts.json").write_text(json.dumps({"blocks": [{"sink_ratio": v} for v in artifacts]}))


def test_aggregation_is_mean_and_std_over_seeds_and_shows_failures(tmp_path):
    out = tmp_path / "study"
    probes = {0: 0.80, 1: 0.84, 2: 0.85}
    for k, top1 in probes.items():
        cell = out / "random" / f"seed{k}"
        fake_task(cell / "pretrain", {})
        fake_task(cell / "linprobe", {"test/top1": top1})
        fake_task(
            cell / "finetune",
            {
                "test/top1": 0.9,
                "attn/shallow_sink_ratio": 2.0 + k,
                "attn/block_01/sink_ratio": 2.0,
                "attn/block_02/sink_ratio": 3.0,
            },
        )
        fake_task(cell / "segment", {"test/mIoU": 0.5})
        fake_task(
            cell / "analyze",
            {"attn/shallow_sink_ratio": 3.0, "attn/shallow_artifact_fraction": 0.01},
            artifacts=[1.0 + k, 4.0],
        )
    fake_task(out / "random_init" / "seed0" / "linprobe", {"test/top1": 0.761})
    fake_task(out / "semantic" / "seed0" / "pretrain", error="semmae-pretrain: error: boom")
    for task in ("linprobe", "finetune", "segment", "analyze"):
        fake_task(out / "semantic" / "seed0" / task, error="skipped: no pretraining checkpoint")
    path = tmp_path / "RESULTS.md"
    path.write_text("# title\n\nA reading written by hand.\n")
    report.write(
        path,
        out,
        "cpu",
        ablation=False,
        strategies=["random", "semantic"],
        seeds=[0, 1, 2],
        variants=run.ABLATION,
        about="test",
    )
    text = path.read_text()
    assert "A reading written by hand." in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| random |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    mean, std = statistics.fmean(probes.values()) * 100, statistics.stdev(probes.values()) * 100
    assert cells[1] == "3" and cells[2] == f"{mean:.1f} ± {std:.1f}"
    assert cells[5] == "3.00 ± 0.00" and cells[8] == "3.00 ± 1.00"  # analyze, then fine-tuned sink ratio
    semantic = next(ln for ln in text.splitlines() if ln.startswith("| semantic |"))
    assert semantic.count("failed") == len(report.MAIN_COLUMNS)
    assert "semantic/seed0 pretrain: semmae-pretrain: error: boom" in text
    floor = next(ln for ln in text.splitlines() if ln.startswith("| random_init (floor"))
    assert [c.strip() for c in floor.strip("|").split("|")][1:4] == ["—", "76.1", "—"]
    # seeds 1 and 2 of semantic never ran: missing, not failed, and not counted as failures
    assert "(1 of 3 failed)" not in semantic
    assert (tmp_path / "figures" / "cpu" / "sink_vs_block.png").is_file()
    assert "total wall time of the finished tasks: 160 s" in text  # 3 x 5 tasks + the floor's, 10 s each; no failures
    # a second write replaces the section instead of appending another
    report.write(
        path,
        out,
        "cpu",
        ablation=False,
        strategies=["random", "semantic"],
        seeds=[0, 1, 2],
        variants=run.ABLATION,
        about="test",
    )
    assert path.read_text().count("<!-- BEGIN cpu ") == 1


def test_sink_over_training_reads_the_pretraining_csv_by_epoch(tmp_path):
    out = tmp_path / "study"
    for name, values in (("random", [1.5, 2.5, 3.5]), ("semantic", [1.4, 1.9, 2.2])):
        run_dir = out / name / "seed0" / "pretrain"
        fake_task(run_dir, {})
        (run_dir / "results.json").write_text(json.dumps({"metrics": {}, "epochs": 3, "global_step": 30}))
        for version, rows in ((0, [(9, values[0]), (19, 9.9)]), (1, [(19, values[1]), (29, values[2])])):
            csv_dir = run_dir / "csv" / f"version_{version}"  # version_1: a resumed run that redid epoch 2
            csv_dir.mkdir(parents=True)
            lines = ["step,train/loss,attn/shallow_sink_ratio", f"{rows[0][0] - 1},0.5,"]  # a training row first
            lines += [f"{step},,{v}" for step, v in rows]
            (csv_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    assert report.sink_over_training(out / "random" / "seed0" / "pretrain") == {1: 1.5, 2: 2.5, 3: 3.5}
    path = report.write(
        tmp_path / "RESULTS.md",
        out,
        "cpu-long",
        ablation=False,
        strategies=["random", "semantic"],
        seeds=[0],
        variants=run.ABLATION,
        about="test",
        tasks=run.ABLATION_TASKS,
    )
    text = path.read_text()
    assert "| random | 1.50 | 2.50 | 3.50 |" in text and "| semantic | 1.40 | 1.90 | 2.20 |" in text
    assert (tmp_path / "figures" / "cpu-long" / "sink_over_training.png").is_file()
    header = next(ln for ln in text.splitlines() if ln.startswith("| strategy |"))
    assert "linear probe" in header and "fine-tune" not in header and "mIoU" not in header  # tasks it ran only


def test_ablation_table_marks_the_default_and_names_candidates(tmp_path):
    out = tmp_path / "study"
    for name, _, _ in run.ABLATION:
        cell = out / "ablation" / name
        fake_task(cell / "pretrain", {"val/online_probe_acc": 0.7})
        fake_task(cell / "linprobe", {"test/top1": 0.80 if name != "num_regions_16" else 0.81})
        fake_task(cell / "analyze", {"attn/shallow_sink_ratio": 5.0 if name != "num_regions_16" else 4.0})
    path = report.write(
        tmp_path / "RESULTS.md",
        out,
        "cpu",
        ablation=True,
        strategies=[],
        seeds=[0],
        variants=run.ABLATION,
        about="test",
    )
    text = path.read_text()
    assert "| **semantic (default)** | default |" in text
    assert len(re.findall(r"^\| (?:\*\*)?\w", text, re.M)) >= len(run.ABLATION)
    assert "no lower linear-probe top-1 (one seed, so a candidate, not a verdict): num_regions_16." in text


@pytest.mark.slow
def test_smoke_study_runs_every_task_and_resumes(tmp_path, fmnist_root, capsys):
    out = tmp_path / "study"
    argv = [
        "--preset",
        "smoke",
        "--strategies",
        "random",
        "semantic",
        "--seeds",
        "0",
        "--out",
        str(out),
        "--data-root",
        str(fmnist_root),
    ]
    assert run.main(argv) == 0, capsys.readouterr()
    for strategy in ("random", "semantic"):
        for task in run.TASKS:
            results = json.loads((out / strategy / "seed0" / task / "results.json").read_text())
            assert results["metrics"], (strategy, task)
    for task in run.FLOOR_TASKS:
        assert json.loads((out / run.FLOOR / "seed0" / task / "results.json").read_text())["metrics"]
    text = (out / "RESULTS.md").read_text()
    for strategy in ("random", "semantic"):
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {strategy} |"))
        values = [c.strip() for c in row.strip("|").split("|")][2:]
        assert len(values) == len(report.MAIN_COLUMNS) and all(re.fullmatch(r"-?\d+\.\d+", v) for v in values), row
        assert (out / "figures" / "smoke" / f"attention_{strategy}.png").is_file()
    assert (out / "figures" / "smoke" / "sink_vs_block.png").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    capsys.readouterr()
    assert run.main(argv) == 0
    assert "12 of 12 tasks already done; running 0" in capsys.readouterr().out  # 2 cells + the floor's 2 tasks
    assert {p: p.stat().st_mtime_ns for p in out.rglob("results.json")} == stamps


def test_a_failed_pretraining_is_recorded_and_the_study_goes_on(tmp_path, fmnist_root, monkeypatch, capsys):
    monkeypatch.setitem(run.STRATEGIES, "broken", ["masking=semantic", "masking.num_regions=0"])
    out = tmp_path / "study"
    code = run.main(
        [
            "--preset",
            "smoke",
            "--strategies",
            "broken",
            "--seeds",
            "0",
            "1",
            "--out",
            str(out),
            "--data-root",
            str(fmnist_root),
            "--no-floor",
        ]
    )
    assert code == 1
    for seed in (0, 1):  # the second cell ran after the first failed
        cell = out / "broken" / f"seed{seed}"
        error = json.loads((cell / "pretrain" / "runner.json").read_text())["error"]
        assert error.startswith("semmae-pretrain: error: masking.num_regions"), error
        for task in run.TASKS[1:]:
            skipped = json.loads((cell / task / "runner.json").read_text())
            assert skipped["error"].startswith("skipped: the cell's pretraining") and skipped["returncode"] is None
    row = next(ln for ln in (out / "RESULTS.md").read_text().splitlines() if ln.startswith("| broken |"))
    assert [c.strip() for c in row.strip("|").split("|")][1:] == ["0", *["failed"] * len(report.MAIN_COLUMNS)]


def test_results_hold_no_absolute_path_of_the_machine(tmp_path, monkeypatch):
    """RESULTS.md is read in clones: its commands name the interpreter as `python`, paths inside the repository
    relative to its root and a study directory outside it as $STUDY, never this machine's absolute paths."""
    real_run = run.subprocess.run

    def fake_run(argv, **kwargs):  # a task that writes its results.json at once (or fails, for semantic's pretrain)
        if argv[1:2] != ["-m"]:  # not a task (platform asks uname): the real thing
            return real_run(argv, **kwargs)
        run_dir = Path(argv[-1].split("=", 1)[1])
        if argv[2] == "semmae.pretrain" and "masking=semantic" in argv:
            return run.subprocess.CompletedProcess(argv, 1, None, "semmae-pretrain: error: boom\n")
        (run_dir / "results.json").write_text(json.dumps({"metrics": {"test/top1": 0.5}}))
        return run.subprocess.CompletedProcess(argv, 0, None, "")

    monkeypatch.setattr(run.subprocess, "run", fake_run)
    out = tmp_path / "study"
    code = run.main(
        [
            "--preset",
            "smoke",
            "--strategies",
            "random",
            "semantic",
            "--seeds",
            "0",
            "--out",
            str(out),
            "--data-root",
            "/data/fmnist",
        ]
    )
    assert code == 1  # semantic's tasks failed or were skipped
    text = (out / "RESULTS.md").read_text()
    for absolute in (str(run.REPO) + "/", str(tmp_path), "/tmp/"):
        assert absolute not in text, [ln for ln in text.splitlines() if absolute in ln][:3]
    assert "\npython -m semmae.pretrain " in text and "hydra.run.dir=$STUDY/random/seed0/pretrain" in text
    assert "--out $STUDY --data-root /data/fmnist" in text  # the runner session as typed; the data root as given
    assert "skipped: the cell's pretraining ($STUDY/semantic/seed0/pretrain) did not finish" in text
    inside = run.REPO / "experiments" / "semantic_vs_random" / "runs" / "cpu" / "random" / "seed0"
    command = f"{run.REPO}/.venv/bin/python -m semmae.linprobe ckpt={inside}/pretrain/last.ckpt 'names=[random]'"
    assert report.portable_command(command, inside.parents[1]) == (
        "python -m semmae.linprobe ckpt=experiments/semantic_vs_random/runs/cpu/random/seed0/pretrain/last.ckpt "
        "'names=[random]'"
    )


def test_a_budget_stops_between_tasks_and_the_next_run_resumes(tmp_path, monkeypatch, capsys):
    """--budget-min: no task starts once the budget is spent (the running one finishes); the next run picks up the
    tasks left, and an unfinished study is not a failure."""
    real_run = run.subprocess.run
    started = []

    def fake_run(argv, **kwargs):  # each task takes 2 s of the runner's clock and writes its results.json
        if argv[1:2] != ["-m"]:
            return real_run(argv, **kwargs)
        started.append(argv[-1])
        clock[0] += 2.0
        (Path(argv[-1].split("=", 1)[1]) / "results.json").write_text(json.dumps({"metrics": {"test/top1": 0.5}}))
        return run.subprocess.CompletedProcess(argv, 0, None, "")

    clock = [0.0]
    monkeypatch.setattr(run.subprocess, "run", fake_run)
    monkeypatch.setattr(run.time, "perf_counter", lambda: clock[0])
    out = tmp_path / "study"
    argv = [
        "--preset",
        "smoke",
        "--strategies",
        "random",
        "--seeds",
        "0",
        "--no-floor",
        "--out",
        str(out),
        "--data-root",
        "/data/fmnist",
        "--budget-min",
        str(3.0 / 60),
    ]  # 3 s: two tasks start, then it stops
    assert run.main(argv) == 0
    assert len(started) == 2 and "--budget-min 0.05 reached: 3 tasks left, not started" in capsys.readouterr().out
    assert run.main(argv[:-2]) == 0 and len(started) == 5  # the rest, and nothing twice
    assert "2 of 5 tasks already done; running 3" in capsys.readouterr().out


@pytest.mark.parametrize("killed", ["after_a_checkpoint", "before_a_checkpoint"])
def test_a_crashed_attempt_is_cleared_and_its_retry_keeps_the_runner_log(tmp_path, killed):
    run_dir = tmp_path / "study" / "random" / "seed0" / "pretrain"
    (run_dir / "csv" / "version_0").mkdir(parents=True)
    (run_dir / "csv" / "version_0" / "metrics.csv").write_text("step,train/loss\n50,1.37\n")
    (run_dir / "pretrain.log").write_text("the killed attempt's log")
    if killed == "after_a_checkpoint":
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"an early checkpoint of a crashed attempt")
    (run_dir / "notes.txt").write_text("the user's")
    script = (
        "import json, sys, pathlib; print('the retry ran', file=sys.stderr); "
        f"pathlib.Path({str(run_dir)!r}, 'results.json').write_text(json.dumps({{'metrics': {{}}}}))"
    )
    job = run.Job("random/seed0", "pretrain", [sys.executable, "-c", script], run_dir, None)
    record = run.execute(job, dict(os.environ))
    assert record["returncode"] == 0 and "error" not in record and "overwrite" not in record["command"]
    assert not (run_dir / "checkpoints").exists() and (run_dir / "notes.txt").read_text() == "the user's"
    assert not (run_dir / "csv").exists() and not (run_dir / "pretrain.log").exists()  # no version_0 beside the retry
    assert "the retry ran" in (run_dir / "runner.log").read_text()
