"""Replication study (issue 8): semantic vs random vs block masking, everything else identical.

For each strategy x seed ("cell"): pretrain, then linear probe, fine-tune (with its attention metrics), segmentation
(fashion_mnist_seg) and artifact metrics of the pretrained encoder (semmae-analyze). Each task is a subprocess
`python -m semmae.<task> ... hydra.run.dir=<out>/<strategy>/seed<k>/<task>`; it leaves results.json there (its
numbers) and runner.json (the runner's record: command, wall time, exit code, the one-line error of a failure).
A task whose results.json exists is not rerun, so an interrupted study resumes where it stopped; a failed task is
recorded and the other cells go on (the tasks that need its checkpoint are recorded as skipped).
`--ablation` runs the one-factor-at-a-time ablation of the semantic spec instead (one seed; pretrain, linear probe,
analyze). At the end, report.py writes RESULTS.md from the results.json files.

`--preset cpu-readings` compares the readings of semantic masking (semantic, semantic_informative at alpha 1 and 3,
semantic_stratified, semantic_features), the contiguity controls (random_units, block) and random with registers
against random at equal epochs:
pretrain, linear probe on the CLS token (linprobe) and on the mean patch token (linprobe_avg), efficient probing of
the patch tokens (probe_ep) and DINO's k-NN on the CLS token (knn), both on the linear probe's cached images,
fine-tuning with the artifact series, analyze. `--mode screening` (its default) runs seed 0 of every arm;
`--mode confirmation` seeds 0 1 2 of the arms named with --strategies, plus random and random_registers, into the
same --out, so the screening's seed-0 cells are reused. Its report pairs every arm with random seed by seed and
applies the study's decision rule. A cell takes ~13 min on 2 cores (docs/studies.md).

    python experiments/semantic_vs_random/run.py --preset cpu                # main study, ~75 min on 2 cores
    python experiments/semantic_vs_random/run.py --preset cpu --ablation     # ablation, ~25 min on 2 cores
    python experiments/semantic_vs_random/run.py --preset cpu-long           # the longer-run check, ~1.5 h on 2 cores
    python experiments/semantic_vs_random/run.py --preset cpu-readings       # screening: 9 arms x seed 0, ~2 h
    python experiments/semantic_vs_random/run.py --preset cpu-readings --mode confirmation \
        --strategies semantic_stratified semantic_features    # 4 arms x seeds 0 1 2, the 4 seed-0 cells reused: ~1.8 h
    python experiments/semantic_vs_random/run.py --preset cpu-instrument --tasks pretrain linprobe analyze
        # the diagnostics' resolving power (resolving_power.py), every cell but its fine-tuning; then without --tasks
    python experiments/semantic_vs_random/run.py --preset gpu                # one GPU, longer schedules, ViT-T
    python experiments/semantic_vs_random/run.py --preset gpu-readings       # the readings study on one GPU
    python experiments/semantic_vs_random/run.py --preset paper --data-root /data/imagenet \
        --seg-root /data/ADEChallengeData2016 --set train:trainer.devices=8 --dry-run
    python experiments/semantic_vs_random/run.py --preset smoke --data-root DIR --out /tmp/study   # seconds per task
    python experiments/semantic_vs_random/run.py --preset smoke-readings --data-root DIR --out /tmp/readings
    python experiments/semantic_vs_random/run.py --preset gpu-suite-readings --out /tmp/suite --results /tmp/R.md

`gpu-suite-readings` (experiments/gpu_suite.py's step 4) writes a section keyed `gpu` whose heading names the device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from semmae.utils.run_dir import clear_run, is_run_entry

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from report import FLOOR, TASKS  # noqa: E402  the report reads the cells this runner writes: one definition

ABLATION_TASKS = ("pretrain", "linprobe", "analyze")
# the readings study: the linear probe on the CLS token (linprobe) and on the mean patch token (linprobe_avg),
# efficient probing (probe_ep) and k-NN (knn), all four on the same images
READINGS_TASKS = ("pretrain", "linprobe", "linprobe_avg", "probe_ep", "knn", "finetune", "analyze")
ALL_TASKS = (*TASKS, "linprobe_avg", "probe_ep", "knn")
# a task (its run directory) -> its semmae.<module> when the names differ
MODULES = {"linprobe_avg": "linprobe", "probe_ep": "linprobe", "knn": "linprobe"}
TRAINING = ("pretrain", "linprobe", "linprobe_avg", "probe_ep", "knn", "finetune", "segment")
FLOOR_TASKS = ("linprobe", "analyze")
STRATEGIES = {
    "random": ["masking=random"],
    "semantic": ["masking=semantic"],
    "block": ["masking=block"],
    # the ablation's flat-region variant, as a strategy of its own for the longer run
    "semantic_flat_last": ["masking=semantic", "masking.flat_last=true"],
    # the readings of semantic masking (the cpu-readings preset), each against random at equal epochs
    "semantic_informative_a1": ["masking=semantic_informative", "masking.alpha=1"],
    "semantic_informative_a3": ["masking=semantic_informative", "masking.alpha=3"],
    "semantic_stratified": ["masking=semantic_stratified"],
    "semantic_features": ["masking=semantic_features"],
    "random_units": ["masking=random_units"],
    # the control with a known effect on the sinks. Only pretraining needs the override: every later task
    # builds its encoder from the checkpoint, whose weights (reg_token) fix the registers
    # (semmae.models.weights.weights_from_checkpoint; backbone.reg_tokens shapes ckpt=null only)
    "random_registers": ["masking=random", "backbone.reg_tokens=4"],
    # the second control: a sigmoid gate on each head's output, which the sink-taxonomy paper finds removes
    # NOP sinks (the gate, like the registers, is in the checkpoint's weights)
    "random_gated": ["masking=random", "backbone.attn_gate=true"],
}
# the screening's arms in run order: the reference and the control first, today's reading, the new readings, then
# the contiguity controls and the second alpha (a study cut short has compared the most telling arms)
READINGS_ARMS = (
    "random",
    "random_registers",
    "semantic",
    "semantic_informative_a1",
    "semantic_stratified",
    "semantic_features",
    "random_units",
    "block",
    "semantic_informative_a3",
)
INSTRUMENT_ARMS = ("random", "random_registers", "random_gated", "semantic", "semantic_features")
READINGS_CONTROLS = ("random", "random_registers")  # always in a confirmation: the reference and the known effect
MODES = ("screening", "confirmation")

# One factor at a time around conf/masking/semantic.yaml (K = 8, r = 0.25, color_kmeans, flat regions in random
# order), plus random and block as controls. (name = its directory, factor, overrides of the pretraining run)
ABLATION = [
    ("semantic", "default", ["masking=semantic"]),
    ("num_regions_4", "num_regions", ["masking=semantic", "masking.num_regions=4"]),
    ("num_regions_16", "num_regions", ["masking=semantic", "masking.num_regions=16"]),
    ("num_regions_32", "num_regions", ["masking=semantic", "masking.num_regions=32"]),
    ("random_fraction_0", "random_fraction", ["masking=semantic", "masking.random_fraction=0.0"]),
    ("random_fraction_0.5", "random_fraction", ["masking=semantic", "masking.random_fraction=0.5"]),
    ("segmenter_slic", "segmenter", ["masking=semantic", "masking.segmenter=slic"]),
    ("segmenter_given", "segmenter", ["masking=semantic", "masking.segmenter=given", "dataset.segments=foreground"]),
    ("flat_last", "flat regions", ["masking=semantic", "masking.flat_last=true"]),
    (
        "flat_last_threshold_0.3",
        "flat regions",
        ["masking=semantic", "masking.flat_last=true", "masking.flat_threshold=0.3"],
    ),
    ("random", "control", ["masking=random"]),
    ("block", "control", ["masking=block"]),
]


@dataclass
class Preset:
    """Overrides per task; "train" goes to every task that trains (all but analyze, which has no trainer or
    logger group). Data roots are filled in from the command line."""

    about: str
    tasks: dict[str, list[str]]
    data: str | None = None  # classification data root to default to (Fashion-MNIST's Debian package)
    needs_roots: bool = False
    ablation: dict[str, list[str]] = field(default_factory=dict)  # extra overrides of the ablation runs
    run_tasks: tuple[str, ...] = TASKS  # the tasks of each cell of the main study
    strategies: tuple[str, ...] = ("random", "semantic", "block")  # the defaults of --strategies, --seeds, --floor
    seeds: tuple[int, ...] = (0, 1, 2)
    floor: bool = True
    readings: bool = False  # --mode screening | confirmation, and the readings report (paired differences)
    instrument: bool = False  # the instrument report: each diagnostic's resolving power (resolving_power.py)
    confirmation_seeds: tuple[int, ...] = (0, 1, 2)
    section: str | None = None  # its marked section of RESULTS.md (default: the preset's name)

    def overrides(self, task: str, ablation: bool = False) -> list[str]:
        extra = self.ablation.get(task, []) if ablation else []
        common = self.tasks.get("train", []) if task in TRAINING else []
        merged = {o.split("=", 1)[0]: o for o in [*common, *self.tasks.get(task, []), *extra]}  # later ones win
        return list(merged.values())


# what every readings preset shares: its tasks, its arms, the screening's seed, no floor row, the readings report
READINGS = dict(run_tasks=READINGS_TASKS, strategies=READINGS_ARMS, seeds=(0,), floor=False, readings=True)

# the GPU suite's readings (experiments/gpu_suite.py, step 4): the reference, the control with a known effect, today's
# reading and the reading from the model's own features
SUITE_ARMS = ("random", "random_registers", "semantic", "semantic_features")

FMNIST = "/usr/share/datasets/fashion-mnist"
TINY = [
    "backbone.embed_dim=32",
    "backbone.depth=3",
    "backbone.num_heads=2",
    "backbone.decoder_embed_dim=16",
    "backbone.decoder_depth=1",
    "backbone.decoder_num_heads=2",
]

SMOKE = {
    "train": ["logger=none", "trainer.max_epochs=1"],
    "pretrain": [*TINY, "dataset.train_subset=256", "dataset.val_subset=128", "dataset.batch_size=64"],
    "linprobe": [*TINY, "dataset.train_subset=256", "dataset.val_subset=128"],  # TINY: the floor's encoder
    "finetune": [
        "dataset.train_subset=128",
        "dataset.val_subset=64",
        "dataset.batch_size=64",
        "callbacks.attention_maps.num_images=32",
    ],
    "segment": [
        "dataset.train_subset=64",
        "dataset.val_subset=32",
        "dataset.batch_size=32",
        "dataset.eval_batch_size=32",
    ],
    "analyze": [*TINY, "num_images=32", "batch_size=32", "figure_images=2"],
}
CPU_PROBE = ["dataset.train_subset=10000", "dataset.val_subset=5000", "trainer.max_epochs=30"]
VIT_TINY_GPU = ["trainer=gpu", "backbone=vit_tiny", "backbone.img_size=32", "backbone.patch_size=4"]
SERIES_AT = "callbacks.attention_maps.series_at=[0.1,0.25,0.5,0.75]"  # the fine-tuning series of the readings
# cpu-readings' fine-tuning: 1,000 steps of batch 64 on 16,000 images, the series on 1,000 validation images
READINGS_FINETUNE = [
    "dataset.train_subset=16000",
    "dataset.val_subset=2000",
    "dataset.batch_size=64",
    "model.optim.blr=2.0e-3",
    "trainer.max_epochs=4",
    "callbacks.attention_maps.num_images=1000",
    SERIES_AT,
]

# the readings' tasks at the smoke preset's scale: smoke-readings and the GPU suite's CPU stand-in run the same
SMOKE_READINGS = {
    **SMOKE,
    "train": ["logger=csv", "trainer.max_epochs=1"],  # csv: the sinks over pretraining
    "pretrain": [
        *SMOKE["pretrain"],
        "model.probe.enabled=false",
        "callbacks=[default,attention_maps]",
        "callbacks.attention_maps.num_images=32",
    ],
    "linprobe_avg": [*SMOKE["linprobe"], "model.pool=avg"],
    "probe_ep": [*SMOKE["linprobe"], "model.head=ep"],
    "knn": [*SMOKE["linprobe"], "model.head=knn"],
    "finetune": [*SMOKE["finetune"], SERIES_AT],
}

PRESETS = {
    "smoke": Preset(
        about="seconds per task: a 3-block width-32 ViT on a few hundred images (the test's preset)",
        tasks=SMOKE,
    ),
    "smoke-readings": Preset(
        about="seconds per task: the cpu-readings tasks (probes on the CLS and the mean token, fine-tuning with "
        "the artifact series, analysis) with the smoke preset's 3-block width-32 ViT on a few hundred images",
        tasks=SMOKE_READINGS,
        **READINGS,
    ),
    "cpu": Preset(
        about="2 CPU cores: vit_micro, pretrain 2 epochs on 15,000 images; probe on cached features of 10,000 + "
        "5,000; fine-tune 1 epoch on 8,000 (batch 64); segmentation 1 epoch on 2,000 (~4 min per cell); the ablation "
        "pretrains on 12,000 and probes on 8,000 + 4,000",
        data=FMNIST,
        tasks={
            "train": ["logger=csv", "trainer=cpu"],
            "pretrain": ["dataset.train_subset=15000", "dataset.val_subset=2000", "trainer.max_epochs=2"],
            "linprobe": CPU_PROBE,
            # 125 steps at the default run's per-step lr (blr 1e-3 at batch 128 = lr 5e-4): 31 steps of batch 128
            # on 4,000 images left the head near chance (14% top-1 in a timed trial)
            "finetune": [
                "dataset.train_subset=8000",
                "dataset.val_subset=2000",
                "dataset.batch_size=64",
                "model.optim.blr=2.0e-3",
                "trainer.max_epochs=1",
            ],
            "segment": ["dataset.train_subset=2000", "dataset.val_subset=1000", "trainer.max_epochs=1"],
            "analyze": ["num_images=1000"],
        },
        # 12 variants in ~25 min: a little less data than the main study, the same for every variant
        ablation={
            "pretrain": ["dataset.train_subset=12000"],
            "linprobe": ["dataset.train_subset=8000", "dataset.val_subset=4000"],
        },
    ),
    "cpu-long": Preset(
        about="the longer-run check on 2 CPU cores: vit_micro pretrained 10 epochs on all 60,000 images without the "
        "online probe (~20 min per strategy), the attention callback measuring the sinks on 256 validation "
        "images after every epoch; then the cpu preset's linear probe (10,000 + 5,000) and semmae-analyze "
        "(1,000 images); seed 0 unless --seeds says more, no fine-tuning or segmentation, no floor row (the "
        "cpu preset's floor has the same probe and analysis)",
        data=FMNIST,
        tasks={
            "train": ["logger=csv", "trainer=cpu"],
            "pretrain": [
                "dataset.train_subset=null",
                "dataset.val_subset=2000",
                "trainer.max_epochs=10",
                "model.probe.enabled=false",
                "callbacks=[default,attention_maps]",
                "callbacks.attention_maps.num_images=256",
            ],
            "linprobe": ["dataset.train_subset=10000", "dataset.val_subset=5000", "trainer.max_epochs=30"],
            "analyze": ["num_images=1000"],
        },
        run_tasks=ABLATION_TASKS,
        strategies=("random", "semantic", "semantic_flat_last", "block"),
        seeds=(0,),
        floor=False,
    ),
    "cpu-readings": Preset(
        about="the readings of semantic masking against random on 2 CPU cores, every arm at equal epochs: vit_micro "
        "pretrained 6 epochs on all 60,000 images without the online probe, the attention callback measuring "
        "the sinks on 256 validation images after every epoch; linear probes (10,000 + 5,000, 30 epochs) on "
        "the CLS token and on the mean patch token, efficient probing and k-NN on the same images; fine-tuning "
        "4 epochs on 16,000 (batch 64, 1,000 steps) with the artifact series on 1,000 validation images "
        "(start, 10/25/50/75% of the steps, end); semmae-analyze (1,000 images); no segmentation, no floor row "
        "(~13 min per cell)",
        data=FMNIST,
        tasks={
            "train": ["logger=csv", "trainer=cpu"],
            "pretrain": [
                "dataset.train_subset=null",
                "dataset.val_subset=2000",
                "trainer.max_epochs=6",
                "model.probe.enabled=false",
                "callbacks=[default,attention_maps]",
                "callbacks.attention_maps.num_images=256",
            ],
            "linprobe": CPU_PROBE,
            "linprobe_avg": [*CPU_PROBE, "model.pool=avg"],
            "probe_ep": [*CPU_PROBE, "model.head=ep"],
            "knn": [*CPU_PROBE, "model.head=knn"],
            # 1,000 steps: 250 (2 epochs on 8,000) left fine-tuning below the linear probe (72.1 vs 77.6% top-1,
            # random, seed 0), though the sink series had settled by half of them
            "finetune": READINGS_FINETUNE,
            "analyze": ["num_images=1000"],
        },
        **READINGS,
    ),
    "cpu-instrument": Preset(
        about="the resolving power of the artifact instrument on 2 CPU cores: the readings study's confirmation arms "
        "(random, random + 4 registers, semantic, semantic_features) and random with gated attention, seeds 0 1 "
        "2, each with cpu-readings' settings (pretraining 6 epochs on all 60,000 images, the CLS linear probe, "
        "fine-tuning 1,000 steps with the artifact series, semmae-analyze on 1,000 images); the controls' "
        "effects on every diagnostic against random's seed spread (12 to 19 min per cell, by machine)",
        data=FMNIST,
        tasks={},  # filled below: cpu-readings' tasks
        run_tasks=("pretrain", "linprobe", "finetune", "analyze"),
        strategies=INSTRUMENT_ARMS,
        seeds=(0, 1, 2),
        floor=False,
        instrument=True,
    ),
    "gpu": Preset(
        about="one GPU: ViT-T/4 at 32 px (experiment=fmnist_vit_tiny_gpu), pretrain 100 epochs on all 60,000 "
        "images; probe on all cached features; fine-tune 10 epochs; segmentation 5 epochs on 20,000",
        data=FMNIST,
        tasks={
            "train": ["logger=csv"],
            "pretrain": [
                "experiment=fmnist_vit_tiny_gpu",
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "trainer.max_epochs=100",
            ],
            "linprobe": [
                "trainer=gpu",
                "backbone=vit_tiny",
                "backbone.img_size=32",
                "backbone.patch_size=4",
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "trainer.max_epochs=30",
            ],
            "finetune": [
                "trainer=gpu",
                "backbone=vit_tiny",
                "backbone.img_size=32",
                "backbone.patch_size=4",
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "dataset.batch_size=256",
                "trainer.max_epochs=10",
                "model.optim.warmup_epochs=1",
            ],
            "segment": [
                "trainer=gpu",
                "backbone=vit_tiny",
                "backbone.img_size=32",
                "backbone.patch_size=4",
                "dataset.train_subset=20000",
                "dataset.val_subset=null",
                "dataset.batch_size=128",
                "trainer.max_epochs=5",
            ],
            "analyze": ["backbone=vit_tiny", "backbone.img_size=32", "backbone.patch_size=4", "num_images=1000"],
        },
        # The ablation on a GPU: ViT-T for about a minute per variant is enough to show the sinks.
        ablation={"pretrain": ["trainer.max_epochs=30"]},
    ),
    "gpu-readings": Preset(
        about="the readings study on one GPU: every cpu-readings arm with ViT-T/4 at 32 px "
        "(experiment=fmnist_vit_tiny_gpu), pretrained 100 epochs on all 60,000 images without the online "
        "probe, the sinks on 1,000 validation images every 10 epochs; probes (CLS and mean token, EP, k-NN) on "
        "all cached features; fine-tuning 10 epochs with the artifact series on 1,000 images; semmae-analyze "
        "(1,000 images)",
        data=FMNIST,
        tasks={
            "train": ["logger=csv"],
            "pretrain": [
                "experiment=fmnist_vit_tiny_gpu",
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "trainer.max_epochs=100",
                "model.probe.enabled=false",
                "callbacks=[default,attention_maps]",
                "callbacks.attention_maps.num_images=1000",
                "callbacks.attention_maps.every_n_epochs=10",
            ],
            "linprobe": [
                *VIT_TINY_GPU,
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "trainer.max_epochs=30",
            ],
            "linprobe_avg": [
                *VIT_TINY_GPU,
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "trainer.max_epochs=30",
                "model.pool=avg",
            ],
            "probe_ep": [
                *VIT_TINY_GPU,
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "trainer.max_epochs=30",
                "model.head=ep",
            ],
            "knn": [*VIT_TINY_GPU, "dataset.train_subset=null", "dataset.val_subset=null", "model.head=knn"],
            "finetune": [
                *VIT_TINY_GPU,
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "dataset.batch_size=256",
                "trainer.max_epochs=10",
                "model.optim.warmup_epochs=1",
                "callbacks.attention_maps.num_images=1000",
                SERIES_AT,
            ],
            "analyze": ["backbone=vit_tiny", "backbone.img_size=32", "backbone.patch_size=4", "num_images=1000"],
        },
        **READINGS,
    ),
    "gpu-suite-readings": Preset(
        about="the GPU suite's readings (experiments/gpu_suite.py), ~6 min on one H200: random, random_registers, "
        "semantic and semantic_features with ViT-T/4 at 32 px (experiment=fmnist_vit_tiny_gpu, batch 1024, "
        "data resident on the GPU, eager: compiling costs more than it saves in 10 epochs), every arm "
        "pretrained 10 epochs on all 60,000 images without the online probe, the sinks on 1,000 validation "
        "images every 2 epochs; probes on the CLS and the mean token and EP (all cached features, batch 1024, "
        "20 epochs), k-NN; cpu-readings' fine-tuning (1,000 steps of batch 64 on 16,000, the artifact series "
        "on 1,000 images); semmae-analyze (1,000 images). Arithmetic: the pilot (DESIGN.md section 4) trained random "
        "66 epochs of 60,000 in 140 s, 2.1 s an epoch, semantic 3.0; so 10 epochs take 21-30 s (semantic_features "
        "adds a no-gradient forward to each step, ~30 s); five processes of ~6 s each to start (imports, "
        "CUDA, the resident data): 30 s; probes ~4 s each, fine-tuning ~15 s with its series, analysis ~3 s: "
        "~75-90 s an arm, 5-6 min for 4",
        data=FMNIST,
        tasks={
            "train": ["logger=csv"],
            "pretrain": [
                "experiment=fmnist_vit_tiny_gpu",
                "dataset.train_subset=null",
                "dataset.val_subset=2000",
                "trainer.max_epochs=10",
                "model.optim.warmup_epochs=1",
                "model.compile=false",
                "model.probe.enabled=false",
                "callbacks=[default,attention_maps]",
                "callbacks.attention_maps.num_images=1000",
                "callbacks.attention_maps.every_n_epochs=2",
            ],
            "linprobe": [
                *VIT_TINY_GPU,
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "dataset.batch_size=1024",
                "trainer.max_epochs=20",
            ],
            "linprobe_avg": [
                *VIT_TINY_GPU,
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "dataset.batch_size=1024",
                "trainer.max_epochs=20",
                "model.pool=avg",
            ],
            "probe_ep": [
                *VIT_TINY_GPU,
                "dataset.train_subset=null",
                "dataset.val_subset=null",
                "dataset.batch_size=1024",
                "trainer.max_epochs=20",
                "model.head=ep",
            ],
            "knn": [*VIT_TINY_GPU, "dataset.train_subset=null", "dataset.val_subset=null", "model.head=knn"],
            "finetune": [*VIT_TINY_GPU, *READINGS_FINETUNE],
            "analyze": ["backbone=vit_tiny", "backbone.img_size=32", "backbone.patch_size=4", "num_images=1000"],
        },
        section="gpu",
        **{**READINGS, "strategies": SUITE_ARMS},
    ),
    "gpu-suite-tiny": Preset(
        about="the GPU suite's readings shrunk to seconds per task on a CPU (gpu_suite.py --scale tiny): the "
        "smoke-readings tasks and model on a few hundred images, the four arms of gpu-suite-readings",
        tasks=SMOKE_READINGS,
        section="gpu",
        **{**READINGS, "strategies": SUITE_ARMS},
    ),
    "paper": Preset(
        about="the paper's scale: ViT-B/16 MAE recipes on ImageNet-1K (conf/experiment/mae_vit_base_in1k_*) and "
        "UperNet on ADE20K (ade20k_vit_base_upernet); needs --data-root (ImageNet) and --seg-root (ADE20K), "
        "multi-GPU settings via --set (e.g. train:trainer.devices=8 pretrain:trainer.num_nodes=4)",
        needs_roots=True,
        tasks={
            "train": ["logger=wandb"],
            "pretrain": ["experiment=mae_vit_base_in1k_pretrain"],
            "linprobe": ["experiment=mae_vit_base_in1k_linprobe"],
            "finetune": ["experiment=mae_vit_base_in1k_finetune"],
            "segment": ["experiment=ade20k_vit_base_upernet"],
            "analyze": ["dataset=imagenet", "backbone=vit_base", "num_images=1000", "batch_size=100"],
        },
    ),
}


PRESETS["cpu-instrument"].tasks = PRESETS["cpu-readings"].tasks  # the same runs, so the two studies compare


@dataclass
class Job:
    cell: str  # e.g. random/seed0 or ablation/num_regions=4
    task: str
    argv: list[str]
    run_dir: Path
    needs: Path | None  # the pretraining run whose checkpoint it reads

    @property
    def done(self) -> bool:
        return (self.run_dir / "results.json").is_file()

    @property
    def module(self) -> str:
        """The semmae.<module> (and conf/<module>.yaml) the task runs: linprobe_avg is a linprobe."""
        return MODULES.get(self.task, self.task)


def data_overrides(preset: Preset, task: str, data_root: str | None, seg_root: str | None) -> list[str]:
    """dataset.root of a task: --data-root (or the preset's default); segmentation reads --seg-root, else the same."""
    root = data_root or preset.data
    if task == "segment":
        root = seg_root or root
    return [f"dataset.root={root}"] if root else []


def plan(args: argparse.Namespace) -> list[Job]:
    """Every task of the study (or the ablation) in run order: cell by cell, pretraining first."""
    preset = PRESETS[args.preset]
    out = Path(args.out)
    if args.ablation:
        seeds = args.seeds[:1]
        cells = [(f"ablation/{name}", masking, seeds[0]) for name, _, masking in ABLATION]
        tasks = ABLATION_TASKS
    else:
        cells = [(f"{s}/seed{k}", STRATEGIES[s], k) for k in args.seeds for s in args.strategies]  # seed-major: a
        # study cut short still compares every strategy
        tasks = preset.run_tasks
        if args.floor:
            cells.insert(0, (f"{FLOOR}/seed{args.seeds[0]}", None, args.seeds[0]))
    extra = {}
    for item in args.set:
        task, _, override = item.partition(":")
        extra.setdefault(task, []).append(override)
    jobs = []
    for cell, masking, seed in cells:
        floor = masking is None
        ckpt = out / cell / "pretrain" / "checkpoints" / "last.ckpt"
        for task in FLOOR_TASKS if floor else tasks:
            run_dir = out / cell / task
            if floor:  # a randomly initialised encoder of the preset's backbone
                inputs = ["ckpt=random", f"names=[{FLOOR}]"] if task == "analyze" else ["ckpt=null"]
            elif task == "pretrain":
                inputs = masking
            elif task == "analyze":  # names label the figures: the strategy, or the ablation variant
                inputs = [f"ckpt={ckpt}", f"names=[{cell.split('/')[1] if args.ablation else cell.split('/')[0]}]"]
                if (preset.readings or preset.instrument) and not args.ablation:  # the asymmetry's pretraining
                    # view: the arm's own masking
                    inputs += [o for o in masking if o.startswith("masking")]
            else:
                inputs = [f"ckpt={ckpt}"]
            user = [*extra.get("all", []), *(extra.get("train", []) if task in TRAINING else []), *extra.get(task, [])]
            module = MODULES.get(task, task)  # linprobe_avg runs semmae.linprobe
            argv = [
                sys.executable,
                "-m",
                f"semmae.{module}",
                *preset.overrides(task, args.ablation),
                *data_overrides(preset, task, args.data_root, args.seg_root),
                *inputs,
                f"seed={seed}",
                *user,
                f"hydra.run.dir={run_dir}",
            ]
            jobs.append(Job(cell, task, argv, run_dir, None if task == "pretrain" or floor else ckpt.parents[1]))
    return [j for j in jobs if j.task in args.tasks] if args.tasks else jobs


def one_line_error(stderr: str) -> str:
    """The CLI's `semmae-<task>: error: ...` line if there is one, else the last non-empty line (a traceback's)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("semmae-") and ": error: " in ln:
            return ln
    return lines[-1] if lines else "no output"


def execute(job: Job, env: dict[str, str]) -> dict:
    """Run one task; record command, wall time, exit code and (on failure) the error line in runner.json."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    argv = job.argv
    # An earlier attempt that crashed or was killed before its results.json (perhaps before its first checkpoint,
    # leaving only its log and csv/version_0): the task starts over, its files removed here (overwrite=true would
    # also remove this runner's runner.log, and a leftover csv/version_0 would sit beside the retry's version_1).
    if any(is_run_entry(entry) for entry in job.run_dir.iterdir()):
        clear_run(job.run_dir)
    record = {"cell": job.cell, "task": job.task, "command": shlex.join(argv)}
    if job.needs is not None and not (job.needs / "results.json").is_file():
        # a crashed pretraining run may have left an early last.ckpt: only a finished one counts
        record.update(
            returncode=None, wall_s=0.0, error=f"skipped: the cell's pretraining ({job.needs}) did not finish"
        )
    else:
        t0 = time.perf_counter()
        with open(job.run_dir / "runner.log", "w") as log:
            proc = subprocess.run(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.PIPE, text=True)
            log.write(proc.stderr)
        record.update(returncode=proc.returncode, wall_s=round(time.perf_counter() - t0, 1))
        if proc.returncode != 0 or not job.done:
            record["error"] = one_line_error(proc.stderr) if proc.returncode != 0 else "exited 0 without results.json"
    (job.run_dir / "runner.json").write_text(json.dumps(record, indent=2))
    return record


def hardware() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return info


def confirmation_arms(named: list[str]) -> list[str]:
    """The arms of a confirmation: the controls (random, random_registers) first, then the named ones, once each."""
    return list(dict.fromkeys([*READINGS_CONTROLS, *named]))


def readings_scope(
    out: Path, strategies: list[str], seeds: list[int], order: tuple[str, ...] = READINGS_ARMS
) -> tuple[list[str], list[int]]:
    """The arms and seeds the readings (or instrument) report covers: this run's and every other one the study
    directory holds, so that a confirmation's report keeps the screening's arms and the other way round, and a run of
    some arms keeps the others'. Arms in the preset's order (random first), seeds ascending."""
    found = {s for s in STRATEGIES if (out / s).is_dir()}
    arms = [s for s in dict.fromkeys([*order, *STRATEGIES]) if s in found or s in strategies]
    on_disk = {int(d.name[4:]) for s in arms for d in (out / s).glob("seed*") if d.name[4:].isdigit()}
    return arms, sorted(set(seeds) | on_disk)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu",
        help="\n".join(f"{k}: {v.about}" for k, v in PRESETS.items()),
    )
    p.add_argument("--out", help="study directory (default experiments/semantic_vs_random/runs/<preset>)")
    p.add_argument(
        "--strategies",
        nargs="+",
        choices=list(STRATEGIES),
        help="default: the preset's (random semantic block; cpu-long adds semantic_flat_last;\n"
        "cpu-readings: " + " ".join(READINGS_ARMS) + ")",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        help="default: the preset's (0 1 2; cpu-long and a screening: 0; a confirmation: 0 1 2)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        help="the readings presets (cpu-readings, smoke-readings) only: screening (the default: seed 0,\n"
        "every arm) or confirmation (seeds 0 1 2, the arms of --strategies plus random and\n"
        "random_registers); both into the same --out, so the screening's seed-0 cells are reused",
    )
    p.add_argument("--ablation", action="store_true", help="the ablation of the semantic spec (first seed only)")
    p.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        help="also probe and analyze a randomly initialised encoder (first seed): the table's floor row "
        "(default: on, except for cpu-long)",
    )
    p.add_argument(
        "--data-root",
        help="dataset.root of pretraining / probe / fine-tune / analyze "
        "(cpu, gpu: Fashion-MNIST, default " + FMNIST + "; paper: ImageNet)",
    )
    p.add_argument("--seg-root", help="dataset.root of segmentation (default: --data-root; paper: ADE20K)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TASK:OVERRIDE",
        help="an extra Hydra override for one task (pretrain, linprobe, ...), train (all but analyze)\n"
        "or all, "
        "e.g. train:trainer.devices=8",
    )
    p.add_argument(
        "--results",
        help="RESULTS.md to write (default: next to run.py for cpu/gpu/paper in their default "
        "--out, else <out>/RESULTS.md); each preset and the ablation own a marked section in it",
    )
    p.add_argument(
        "--budget-min",
        type=float,
        metavar="MINUTES",
        help="start no task after MINUTES of this run (the one running finishes); the next run resumes:\n"
        "a long study in pieces that each end within a working session",
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        metavar="TASK",
        help="only these of the preset's tasks (pretraining first when a later one needs it); the others are\n"
        "left for a later run into the same --out, e.g. every cell's pretrain and analyze before any fine-tuning",
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands (those already done marked) and stop")
    p.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from what is there; run nothing")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.mode is not None and not preset.readings:
        p.error(
            f"--mode is for the readings presets ({', '.join(k for k, v in PRESETS.items() if v.readings)}), "
            f"not --preset {args.preset}"
        )
    if preset.readings:
        args.mode = args.mode or "screening"
    if args.mode == "confirmation":
        if not args.strategies:
            p.error(
                "--mode confirmation needs --strategies: the arms to confirm (random and random_registers are added)"
            )
        args.strategies = confirmation_arms(args.strategies)
        args.seeds = args.seeds or list(preset.confirmation_seeds)
    args.strategies = args.strategies or list(preset.strategies)
    args.seeds = args.seeds or list(preset.seeds)
    args.floor = preset.floor if args.floor is None else args.floor
    default_out = HERE / "runs" / args.preset
    if args.out is None:
        args.out = str(default_out)
    if args.results is None:  # the smoke and GPU-suite presets never write the study's own RESULTS.md by default
        own = not args.preset.startswith(("smoke", "gpu-suite")) and Path(args.out).resolve() == default_out
        args.results = str(HERE / "RESULTS.md") if own else str(Path(args.out) / "RESULTS.md")
    if args.tasks:
        allowed = ABLATION_TASKS if args.ablation else preset.run_tasks
        wrong = [t for t in args.tasks if t not in allowed]
        if wrong:
            p.error(f"--tasks {' '.join(wrong)}: not a task of --preset {args.preset} (its tasks: {' '.join(allowed)})")
    for item in args.set:
        task, sep, _ = item.partition(":")
        if not sep or task not in ("all", "train", *ALL_TASKS):
            p.error(f"--set {item!r}: expected TASK:OVERRIDE with TASK one of all, train, {', '.join(ALL_TASKS)}")
    if PRESETS[args.preset].needs_roots and not args.dry_run and not (args.data_root and args.seg_root):
        p.error(f"--preset {args.preset} needs --data-root (ImageNet-1K) and --seg-root (ADE20K)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jobs = plan(args)
    if args.dry_run:
        for job in jobs:
            print(("# done: " if job.done else "") + shlex.join(job.argv))
        return 0
    out = Path(args.out)
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": pythonpath}
        env.setdefault("WANDB_MODE", "offline")
        todo = [j for j in jobs if not j.done]
        print(f"{len(jobs) - len(todo)} of {len(jobs)} tasks already done; running {len(todo)} into {out}", flush=True)
        t0 = time.perf_counter()
        for i, job in enumerate(todo, 1):
            if args.budget_min is not None and time.perf_counter() - t0 > 60 * args.budget_min:
                stopped = len(todo) - i + 1
                print(
                    f"--budget-min {args.budget_min:g} reached: {stopped} tasks left, not started; run the same "
                    "command again to resume",
                    flush=True,
                )
                break
            rec = execute(job, env)
            status = "ok" if "error" not in rec else "FAILED: " + rec["error"]
            print(f"[{i}/{len(todo)}] {job.cell} {job.task}: {rec['wall_s']:.0f} s {status}", flush=True)
        invocation = argv if argv is not None else sys.argv[1:]
        session = {
            "argv": ["python", str(Path(__file__).relative_to(REPO)), *invocation],
            "preset": args.preset,
            "tasks_run": len(todo),
            "wall_s": round(time.perf_counter() - t0, 1),
            "hardware": hardware(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with open(out / "sessions.jsonl", "a") as f:
            f.write(json.dumps(session) + "\n")
    import report  # next to this file (on sys.path since the import of FLOOR)

    preset = PRESETS[args.preset]
    strategies, seeds = args.strategies, args.seeds
    readings = preset.readings and not args.ablation
    if readings or preset.instrument:
        strategies, seeds = readings_scope(out, strategies, seeds, tuple(preset.strategies))
    path = report.write(
        Path(args.results),
        out,
        args.preset,
        ablation=args.ablation,
        strategies=strategies,
        seeds=seeds,
        variants=ABLATION,
        about=preset.about,
        tasks=preset.run_tasks,
        readings=readings,
        section=preset.section,
        instrument=preset.instrument,
    )
    print(f"wrote {path}")
    failed = [j for j in jobs if not j.done and (j.run_dir / "runner.json").is_file()]  # tried, no results
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
