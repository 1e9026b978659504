"""The readings study of the runner (experiments/semantic_vs_random/run.py --preset cpu-readings): its arms and modes,
every command composes, the paired differences against random and the decision rule are computed as documented, and
the smoke-readings preset runs the same tasks end to end on the fixture Fashion-MNIST and resumes."""

import json
import re
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose
from tests.experiments.test_semantic_vs_random import fake_task, report, run

MASKINGS = {
    "random": "RandomMasking",
    "random_registers": "RandomMasking",
    "semantic": "SemanticMasking",
    "block": "BlockMasking",
    "semantic_informative_a1": "SemanticInformativeMasking",
    "semantic_informative_a3": "SemanticInformativeMasking",
    "semantic_stratified": "SemanticStratifiedMasking",
    "semantic_features": "SemanticFeaturesMasking",
    "random_units": "RandomUnitsMasking",
}


def test_screening_is_every_arm_at_seed_0_and_confirmation_adds_the_controls(capsys):
    args = run.parse_args(["--preset", "cpu-readings", "--dry-run"])
    assert args.mode == "screening" and args.seeds == [0] and args.strategies == list(run.READINGS_ARMS)
    assert not args.floor and args.out == str(run.HERE / "runs" / "cpu-readings")
    assert set(run.READINGS_ARMS) == set(MASKINGS)
    args = run.parse_args(
        ["--preset", "cpu-readings", "--mode", "confirmation", "--strategies", "semantic_stratified", "random_units"]
    )
    assert args.strategies == ["random", "random_registers", "semantic_stratified", "random_units"]
    assert args.seeds == [0, 1, 2] and args.out == str(run.HERE / "runs" / "cpu-readings")  # the screening's --out
    args = run.parse_args(
        [
            "--preset",
            "cpu-readings",
            "--mode",
            "confirmation",
            "--strategies",
            "random",
            "semantic_features",
            "--seeds",
            "3",
            "4",
        ]
    )
    assert args.strategies == ["random", "random_registers", "semantic_features"] and args.seeds == [3, 4]
    jobs = run.plan(args)  # seed-major, arm by arm: a study cut short still compares arms
    assert [j.cell for j in jobs[:: len(run.READINGS_TASKS)]] == [
        f"{a}/seed{k}" for k in (3, 4) for a in ("random", "random_registers", "semantic_features")
    ]
    for argv, message in (
        (["--preset", "cpu-readings", "--mode", "confirmation"], "--mode confirmation needs --strategies"),
        (["--preset", "cpu", "--mode", "screening"], "--mode is for the readings presets"),
    ):
        with pytest.raises(SystemExit):
            run.parse_args(argv)
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "error: " + message in err, err


def test_every_cpu_readings_command_composes(tmp_path):
    args = run.parse_args(["--preset", "cpu-readings", "--seeds", "1", "--out", str(tmp_path / "study")])
    jobs = run.plan(args)
    assert [j.task for j in jobs] == list(run.READINGS_TASKS) * len(run.READINGS_ARMS)
    assert [j.cell for j in jobs[:: len(run.READINGS_TASKS)]] == [f"{a}/seed1" for a in run.READINGS_ARMS]
    for job in jobs:
        assert job.argv[1:3] == ["-m", f"semmae.{job.module}"]
        assert job.run_dir == tmp_path / "study" / job.cell / job.task
        overrides = [a for a in job.argv[3:] if not a.startswith("hydra.run.dir=")]
        keys = [o.split("=", 1)[0] for o in overrides]
        assert len(keys) == len(set(keys)), overrides
        cfg = compose(job.module, overrides, tmp_path / "cfg")
        arm = job.cell.split("/")[0]
        assert cfg.seed == 1 and cfg.dataset.root == run.FMNIST
        if job.task == "pretrain":
            assert OmegaConf.to_container(cfg.masking)["_target_"].endswith(MASKINGS[arm])
            assert cfg.backbone.reg_tokens == (4 if arm == "random_registers" else 0)
            if arm.startswith("semantic_informative"):
                assert cfg.masking.alpha == int(arm[-1])
            assert cfg.dataset.train_subset is None and cfg.dataset.val_subset == 2000
            assert cfg.trainer.max_epochs == 6 and cfg.model.probe.enabled is False
            assert cfg.callbacks.attention_maps.num_images == 256 and cfg.callbacks.attention_maps.every_n_epochs == 1
            continue
        # the later tasks read the registers from the checkpoint's weights: no backbone override needed
        assert cfg.ckpt == str(job.run_dir.parent / "pretrain" / "checkpoints" / "last.ckpt")
        if job.task in ("linprobe", "linprobe_avg", "probe_ep", "knn"):  # the same images for every probe
            assert cfg.model.pool == ("avg" if job.task == "linprobe_avg" else "token")
            assert cfg.model.head == {"probe_ep": "ep", "knn": "knn"}.get(job.task, "linear")
            assert (cfg.dataset.train_subset, cfg.dataset.val_subset, cfg.trainer.max_epochs) == (10000, 5000, 30)
        elif job.task == "finetune":
            assert (cfg.dataset.train_subset, cfg.dataset.batch_size, cfg.trainer.max_epochs) == (16000, 64, 4)
            assert cfg.model.optim.blr == 2.0e-3 and cfg.callbacks.attention_maps.num_images == 1000
            assert list(cfg.callbacks.attention_maps.series_at) == [0.1, 0.25, 0.5, 0.75]
        else:
            assert job.task == "analyze" and cfg.num_images == 1000 and list(cfg.names) == [arm]
            # the asymmetry's pretraining view is drawn by the arm's own masking
            assert OmegaConf.to_container(cfg.masking)["_target_"].endswith(MASKINGS[arm])
            if arm.startswith("semantic_informative"):
                assert cfg.masking.alpha == int(arm[-1])


def test_tasks_runs_a_part_of_every_cell_and_names_a_task_the_preset_lacks(tmp_path, capsys):
    out = tmp_path / "study"
    base = ["--preset", "cpu-instrument", "--out", str(out)]
    whole = run.plan(run.parse_args(base))
    part = run.plan(run.parse_args([*base, "--tasks", "pretrain", "analyze"]))
    assert [(j.cell, j.task) for j in part] == [(j.cell, j.task) for j in whole if j.task in ("pretrain", "analyze")]
    assert {j.task for j in whole} == {"pretrain", "linprobe", "finetune", "analyze"}
    assert [j.argv for j in part] == [j.argv for j in whole if j.task in ("pretrain", "analyze")]
    with pytest.raises(SystemExit):
        run.parse_args([*base, "--tasks", "pretrain", "probe_ep"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --tasks probe_ep: not a task of --preset cpu-instrument" in err, err


def fake_cell(
    cell: Path,
    probe=0.8,
    probe_avg=0.78,
    top1=0.85,
    sink=2.0,
    ft_sink=(3.0, 2.0),
    prefix=0.1,
    norm=1.5,
    high=0.01,
    ep=0.86,
    knn=0.75,
):
    """A readings cell of fake results.json files; ft_sink: the fine-tuning series' sink ratio, start and end."""
    fake_task(cell / "pretrain", {})
    fake_task(cell / "linprobe", {"test/top1": probe})
    fake_task(cell / "linprobe_avg", {"test/top1": probe_avg})
    fake_task(cell / "probe_ep", {"test/top1": ep})
    fake_task(cell / "knn", {"test/top1": knn})
    fake_task(cell / "finetune", {"test/top1": top1})
    series = [
        {
            "at": at,
            "step": step,
            "epoch": 0,
            "shallow_sink_ratio": v,
            "shallow_prefix_share": prefix,
            "shallow_norm_ratio": norm,
            "shallow_high_norm_fraction": high,
        }
        for at, step, v in (("start", 0, ft_sink[0]), (0.5, 5, statistics.fmean(ft_sink)), ("end", 10, ft_sink[1]))
    ]
    (cell / "finetune" / "results.json").write_text(
        json.dumps({"metrics": {"test/top1": top1}, "artifact_series": series})
    )
    fake_task(
        cell / "analyze",
        {
            "attn/shallow_sink_ratio": sink,
            "attn/shallow_prefix_share": prefix,
            "attn/shallow_norm_ratio": norm,
            "attn/shallow_high_norm_fraction": high,
        },
    )


def row_of(text: str, arm: str, metric: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {arm} | {metric} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_paired_differences_against_random_seed_by_seed(tmp_path):
    out = tmp_path / "study"
    rand = {0: (0.80, 2.0), 1: (0.82, 2.2), 2: (0.81, 2.4)}  # probe CLS, fine-tuning-end sink ratio
    arm = {0: (0.79, 1.5), 1: (0.83, 1.8), 2: (0.80, 2.5)}
    for k in rand:
        fake_cell(
            out / "random" / f"seed{k}",
            probe=rand[k][0],
            ft_sink=(3.0, rand[k][1]),
            sink=1.0 + k,
            ep=0.86 + k / 100,
            knn=0.75,
        )
        fake_cell(
            out / "semantic_stratified" / f"seed{k}",
            probe=arm[k][0],
            ft_sink=(3.0, arm[k][1]),
            sink=1.0 + k,
            ep=0.85 + 2 * k / 100,
            knn=0.74,
        )
    fake_task(out / "semantic_stratified" / "seed2" / "linprobe_avg", error="semmae-linprobe: error: boom")
    (out / "semantic_stratified" / "seed2" / "linprobe_avg" / "results.json").unlink(missing_ok=True)
    arms, seeds = run.readings_scope(out, ["random"], [0])  # a confirmation's report keeps every cell on disk
    assert arms == ["random", "semantic_stratified"] and seeds == [0, 1, 2]
    path = report.write(
        tmp_path / "RESULTS.md",
        out,
        "cpu-readings",
        ablation=False,
        strategies=arms,
        seeds=seeds,
        variants=run.ABLATION,
        about="test",
        tasks=run.READINGS_TASKS,
        readings=True,
    )
    text = path.read_text()
    assert text.count("<!-- BEGIN cpu-readings (written by run.py) -->") == 1
    diffs = [arm[k][1] - rand[k][1] for k in rand]
    rel = [100 * (arm[k][1] - rand[k][1]) / rand[k][1] for k in rand]
    row = row_of(text, "semantic_stratified", "fine-tune-time shallow sink ratio (end of series)")
    assert row[2] == f"{statistics.fmean(diffs):+.3f} ± {statistics.stdev(diffs):.3f}"
    assert row[3] == f"{statistics.fmean(rel):+.1f} ± {statistics.stdev(rel):.1f}"
    assert row[4:7] == ["2/3 lower", "3", f"{statistics.stdev(v[1] for v in rand.values()):.3f}"]
    probe = [100 * (arm[k][0] - rand[k][0]) for k in rand]
    row = row_of(text, "semantic_stratified", "probe CLS top-1 (points)")
    assert row[2] == f"{statistics.fmean(probe):+.2f} ± {statistics.stdev(probe):.2f}" and row[3] == ""
    assert row[4] == "2/3 lower"
    row = row_of(text, "semantic_stratified", "probe mean top-1 (points)")  # seed 2 failed: left out, and said so
    assert row[2] == "+0.00 ± 0.00" and row[4:6] == ["2/2 equal", "2 (seed 2 missing)"]
    assert row_of(text, "semantic_stratified", "pretrained shallow sink ratio (analyze)")[4] == "3/3 equal"
    ep = [100 * ((0.85 + 2 * k / 100) - (0.86 + k / 100)) for k in rand]  # EP and k-NN, paired like the others
    row = row_of(text, "semantic_stratified", "probe EP top-1 (points)")
    assert row[2] == f"{statistics.fmean(ep):+.2f} ± {statistics.stdev(ep):.2f}" and row[4] == "1/3 lower, 1/3 higher"
    assert row_of(text, "semantic_stratified", "k-NN top-1 (points)")[2:5] == ["-1.00 ± 0.00", "", "3/3 lower"]
    # the per-arm table: the fine-tuning series' first and last point, and the failed probe named
    line = next(ln for ln in text.splitlines() if ln.startswith("| semantic_stratified | 3 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = [
        c.strip()
        for c in next(ln for ln in text.splitlines() if ln.startswith("| arm | seeds |")).strip("|").split("|")
    ]
    assert cells[header.index("fine-tune start: sink ratio")] == "3.00 ± 0.00"
    ends = [v[1] for v in arm.values()]
    end = cells[header.index("fine-tune end: sink ratio")]
    assert end == f"{statistics.fmean(ends):.2f} ± {statistics.stdev(ends):.2f}"
    assert cells[header.index("probe mean top-1 %")] == "78.0 ± 0.0 (1 of 3 failed)"
    assert cells[header.index("probe EP top-1 %")] == "87.0 ± 2.0"
    assert cells[header.index("k-NN top-1 %")] == "74.0 ± 0.0"
    assert "| fine-tuning: shallow sink ratio at | start | 0.5 | end |" in text
    assert (
        f"| semantic_stratified | 3.00 | {statistics.fmean((3.0 + e) / 2 for e in ends):.2f} | "
        f"{statistics.fmean(ends):.2f} |" in text
    )
    # the sink ratio along fine-tuning, one line an arm, is drawn and linked
    assert (tmp_path / "figures" / "cpu-readings" / "sink_over_finetuning.png").stat().st_size > 10_000
    assert "![sink ratio over fine-tuning](figures/cpu-readings/sink_over_finetuning.png)" in text
    curves = {"random": [[{"step": 0, "shallow_sink_ratio": 3.0}, {"step": 10, "shallow_sink_ratio": 2.0}]]}
    assert report.plot_sink_over_finetuning(curves, tmp_path / "one.png") == tmp_path / "one.png"
    assert report.plot_sink_over_finetuning({"random": [[]]}, tmp_path / "none.png") is None
    # one seed lowers the sink ratio less than the rest: 2/3 lower, so the rule says no
    assert "- `semantic_stratified`: does not qualify (sink ratio 2/3 lower" in text


def rule_values(sinks, probes):
    return {k: {report.RULE_SINK: s, report.RULE_PROBE: p} for k, (s, p) in enumerate(zip(sinks, probes))}


def test_decision_rule_qualifies_does_not_or_cannot_be_applied_yet():
    ref = rule_values([2.0, 2.0, 2.0], [0.800, 0.800, 0.800])
    assert report.RULE_MIN_SEEDS == 3 and report.RULE_MIN_SINK_DROP_PCT == 15.0 and report.RULE_MAX_PROBE_LOSS == 0.3
    verdict, why = report.decide(rule_values([1.6, 1.7, 1.5], [0.799, 0.798, 0.800]), ref)  # -20%, -0.1 points
    assert verdict == "qualifies" and why == "sink ratio 3/3 lower, -20.0% on average; probe CLS -0.10 points", why
    assert report.decide(rule_values([1.6, 1.7, 1.5], [0.79, 0.80, 0.80]), ref)[0] == "does not qualify"  # -0.33 pt
    assert report.decide(rule_values([1.8, 1.8, 1.8], [0.80, 0.80, 0.80]), ref)[0] == "does not qualify"  # -10%
    assert report.decide(rule_values([1.0, 1.0, 2.1], [0.80, 0.80, 0.80]), ref)[0] == "does not qualify"  # 2/3 lower
    verdict, why = report.decide(rule_values([1.0, 1.0, None], [0.80, 0.80, 0.80]), ref)  # seed 2 not paired
    assert verdict == "cannot be applied yet" and why == "2 paired seeds, the rule needs 3"
    lines = report.decision_lines(
        {"random": ref, "a": rule_values([1.6, 1.7, 1.5], [0.80] * 3), "b": rule_values([1.6], [0.80])},
        ["random", "a", "b"],
    )
    assert lines[0].startswith(
        "Decision rule: a reading qualifies if it lowers the fine-tuning-time shallow sink "
        "ratio vs random in every confirmation seed (≥ 3 seeds) by at least 15% on average "
        "and loses at most 0.3 linear-probe points (CLS)."
    )
    assert lines[2] == "- `a`: qualifies (sink ratio 3/3 lower, -20.0% on average; probe CLS +0.00 points)"
    assert lines[3] == "- `b`: the rule cannot be applied yet (1 paired seed, the rule needs 3)"
    assert (
        lines[-1] == "Outcome: `a` qualifies; `a` (the largest sink drop) is to become what `masking=semantic` "
        "means; left at the screening (fewer than 3 seeds): `b`."
    )


def test_decision_outcome_leaves_controls_out_and_names_the_largest_drop():
    ref = rule_values([2.0, 2.0, 2.0], [0.800] * 3)
    strong, weak, none = (rule_values(s, [0.80] * 3) for s in ([1.4] * 3, [1.6] * 3, [1.9] * 3))
    # registers lower the sinks most, but a control never becomes the default
    lines = report.decision_lines(
        {"random": ref, "random_registers": strong, "x": weak, "y": none}, ["random", "random_registers", "x", "y"]
    )
    assert lines[2] == (
        "- `random_registers`: qualifies (sink ratio 3/3 lower, -30.0% on average; probe CLS +0.00 "
        "points, the control with a known effect, not a reading)"
    )
    assert lines[-1] == (
        "Outcome: `x` qualifies; `x` (the largest sink drop) is to become what `masking=semantic` means."
    )
    lines = report.decision_lines({"random": ref, "x": weak, "semantic": strong}, ["random", "x", "semantic"])
    assert lines[-1] == "Outcome: `x`, `semantic` qualify; `masking=semantic` keeps its meaning, now with the evidence."
    lines = report.decision_lines({"random": ref, "block": strong, "y": none}, ["random", "block", "y"])
    assert lines[-1] == "Outcome: no reading qualifies (`y` decided on ≥ 3 seeds); the defaults stay."
    lines = report.decision_lines({"random": ref, "y": rule_values([1.0], [0.8])}, ["random", "y"])
    assert lines[-1] == "Outcome: not reached yet: no reading has 3 seeds paired with random."
    assert report.paired({0: 1.0, 1: None, 2: 3.0}, {0: 2.0, 1: 2.0}).missing == [1, 2]
    assert report.paired({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0}).signs() == "1/2 lower, 1/2 higher"


@pytest.mark.slow
def test_smoke_readings_study_runs_every_task_and_resumes(tmp_path, fmnist_root, capsys):
    from semmae.models.loading import load_encoder

    out = tmp_path / "study"
    arms = ["random", "random_registers", "semantic_features"]
    argv = [
        "--preset",
        "smoke-readings",
        "--mode",
        "confirmation",
        "--strategies",
        "semantic_features",
        "--seeds",
        "0",
        "1",
        "--out",
        str(out),
        "--data-root",
        str(fmnist_root),
    ]
    assert run.main(argv) == 0, capsys.readouterr()
    for arm in arms:
        for k in (0, 1):
            for task in run.READINGS_TASKS:
                results = json.loads((out / arm / f"seed{k}" / task / "results.json").read_text())
                assert results["metrics"], (arm, k, task)
            series = json.loads((out / arm / f"seed{k}" / "finetune" / "results.json").read_text())["artifact_series"]
            assert series[0]["at"] == "start" and "shallow_sink_ratio" in series[-1]
    for task in ("pretrain", "finetune"):  # the registers come with the checkpoint into fine-tuning
        ckpt = next((out / "random_registers" / "seed0" / task / "checkpoints").glob("*.ckpt"))
        assert load_encoder(ckpt).num_reg_tokens == 4
    assert load_encoder(out / "random" / "seed0" / "pretrain" / "checkpoints" / "last.ckpt").num_reg_tokens == 0
    text = (out / "RESULTS.md").read_text()
    for arm in arms[1:]:
        signs = [row_of(text, arm, label)[4] for label, *_ in report.PAIRED_METRICS]
        assert all(re.fullmatch(r"[0-2]/2 (lower|higher|equal)|1/2 lower, 1/2 higher", s) for s in signs), signs
        role = f", {report.CONTROLS[arm]}, not a reading" if arm in report.CONTROLS else ""
        assert f"- `{arm}`: the rule cannot be applied yet (2 paired seeds, the rule needs 3{role})" in text
    assert "Outcome: not reached yet: no reading has 3 seeds paired with random." in text
    assert "| shallow sink ratio after epoch | 1 |" in text
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    capsys.readouterr()
    assert run.main(argv) == 0
    assert "42 of 42 tasks already done; running 0" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("results.json")} == stamps


def test_the_gpu_readings_preset_runs_the_same_arms_and_every_command_composes(tmp_path):
    args = run.parse_args(["--preset", "gpu-readings", "--out", str(tmp_path / "study")])
    assert args.mode == "screening" and args.strategies == list(run.READINGS_ARMS)
    jobs = run.plan(args)
    assert [j.task for j in jobs] == list(run.READINGS_TASKS) * len(run.READINGS_ARMS)
    for job in jobs:
        overrides = [a for a in job.argv[3:] if not a.startswith("hydra.run.dir=")]
        cfg = compose(job.module, overrides, tmp_path / "cfg")
        if job.task == "analyze":
            assert cfg.backbone.embed_dim == 192 and cfg.num_images == 1000
            continue
        assert cfg.trainer.accelerator == "gpu" and cfg.backbone.embed_dim == 192  # ViT-T/4 everywhere
        assert (cfg.backbone.img_size, cfg.backbone.patch_size) == (32, 4)
        if job.task == "pretrain":
            assert cfg.trainer.max_epochs == 100 and cfg.model.probe.enabled is False  # equal epochs, every arm
            assert cfg.backbone.reg_tokens == (4 if job.cell.startswith("random_registers/") else 0)
        if job.task == "linprobe_avg":
            assert cfg.model.pool == "avg"
        if job.task in ("probe_ep", "knn"):
            assert cfg.model.head == {"probe_ep": "ep", "knn": "knn"}[job.task] and cfg.dataset.train_subset is None
        if job.task == "finetune":
            assert list(cfg.callbacks.attention_maps.series_at) == [0.1, 0.25, 0.5, 0.75]


@pytest.mark.parametrize("preset", ["gpu-suite-readings", "gpu-suite-tiny"])
def test_the_gpu_suite_presets_run_four_arms_at_equal_epochs_and_every_command_composes(tmp_path, preset):
    args = run.parse_args(["--preset", preset, "--out", str(tmp_path / "study")])
    assert args.strategies == list(run.SUITE_ARMS) == ["random", "random_registers", "semantic", "semantic_features"]
    assert args.seeds == [0] and args.results == str(tmp_path / "study" / "RESULTS.md")  # never the study's own
    assert run.PRESETS[preset].section == "gpu"
    epochs = set()
    for job in run.plan(args):
        overrides = [a for a in job.argv[3:] if not a.startswith("hydra.run.dir=")]
        cfg = compose(job.module, overrides, tmp_path / "cfg")
        if job.task == "pretrain":
            epochs.add(cfg.trainer.max_epochs)
            assert cfg.model.probe.enabled is False and "attention_maps" in cfg.callbacks
            assert cfg.backbone.reg_tokens == (4 if job.cell.startswith("random_registers/") else 0)
        if preset == "gpu-suite-readings" and job.task != "analyze":
            assert cfg.trainer.accelerator == "gpu" and cfg.backbone.embed_dim == 192
            assert (cfg.backbone.img_size, cfg.backbone.patch_size) == (32, 4)
        if preset == "gpu-suite-readings" and job.task == "pretrain":
            assert cfg.dataset.batch_size == 1024 and cfg.dataset.resident is True and cfg.model.compile is False
            assert cfg.dataset.train_subset is None and cfg.logger is not None
        if preset == "gpu-suite-readings" and job.task == "finetune":  # cpu-readings' 1,000 steps of batch 64
            assert (cfg.dataset.train_subset, cfg.dataset.batch_size, cfg.trainer.max_epochs) == (16000, 64, 4)
    assert epochs == ({10} if preset == "gpu-suite-readings" else {1})  # equal epochs for every arm


def test_a_section_keyed_apart_from_its_preset_is_titled_by_its_key_and_names_the_device(tmp_path):
    out = tmp_path / "study"
    for arm in ("random", "semantic"):
        fake_cell(out / arm / "seed0")
    hardware = {"cpu": "x86", "cores": 16, "torch": "2.11", "python": "3.12", "gpu": "1 x NVIDIA H200"}
    (out / "sessions.jsonl").write_text(
        json.dumps(
            {"argv": ["python", "run.py"], "tasks_run": 10, "wall_s": 300, "hardware": hardware, "finished": "now"}
        )
        + "\n"
    )
    for _ in range(2):  # rewritten in place
        path = report.write(
            tmp_path / "RESULTS.md",
            out,
            "gpu-suite-readings",
            ablation=False,
            strategies=["random", "semantic"],
            seeds=[0],
            variants=run.ABLATION,
            about="test",
            tasks=run.READINGS_TASKS,
            readings=True,
            section="gpu",
        )
    text = path.read_text()
    assert text.count("<!-- BEGIN gpu (written by run.py) -->") == 1
    assert "## gpu: preset `gpu-suite-readings` on 1 x NVIDIA H200: random, semantic x seeds 0\n" in text
    assert (tmp_path / "figures" / "gpu").is_dir()
    assert report.device_name(tmp_path / "none") == "unknown device"
