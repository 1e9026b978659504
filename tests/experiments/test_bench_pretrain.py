"""bench_pretrain's step breakdown (--profile): every part of a step is measured, the parts cover the step, and the
profiler's top entries are read; the phase clock times what runs between its marks."""

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.tasks.test_pretrain import TINY

REPO = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_pretrain", REPO / "experiments" / "bench_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def test_phase_clock_times_what_runs_between_its_marks():
    clock = bench.PhaseClock(torch.device("cpu"))
    clock.mark()
    time.sleep(0.02)
    clock.mark()
    clock.mark()
    first, second = clock.intervals()
    assert first >= 0.02 and 0 <= second < first
    assert clock.intervals() == []  # read once


@pytest.mark.parametrize("masking", ["random", "semantic_features"])
def test_step_breakdown_measures_every_part_and_the_parts_cover_the_step(compose_cfg, masking):
    from hydra.utils import instantiate

    cfg = compose_cfg("pretrain", [f"masking={masking}", *TINY[:6], "model.probe.enabled=false"])
    task = instantiate(cfg.model)
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(16, 1, 32, 32, generator=g),
        "label": torch.zeros(16, dtype=torch.long),
        "progress": 0.5,
    }  # semantic_features past its warm-up: the masking part runs the encoder for features
    opt = torch.optim.AdamW(task.mae.parameters(), lr=1e-4)
    before = task.mae.encoder.patch_embed.proj.weight.detach().clone()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine two threads wait on each other far longer than they compute
    try:
        result = bench.step_breakdown(task, batch, opt, torch.device("cpu"), reps=9, profiled=2)
    finally:
        torch.set_num_threads(threads)
    assert list(result["parts_ms"]) == list(bench.PARTS)
    assert all(ms > 0 for ms in result["parts_ms"].values()), result["parts_ms"]
    assert result["parts_sum_ms"] == pytest.approx(sum(result["parts_ms"].values()))
    # the parts add up to the same step timed whole (the fastest of each, interleaved; bounds for a busy CPU)
    assert 0.5 < result["parts_sum_ms"] / result["eager_step_ms"] < 2.0, result
    top = result["top_kernels"]
    assert 0 < len(top) <= 10 and all(k["self_ms"] > 0 and k["calls_per_step"] > 0 for k in top)
    assert [k["self_ms"] for k in top] == sorted((k["self_ms"] for k in top), reverse=True)
    assert any(k["name"].startswith("aten::") for k in top) and sum(k["share"] for k in top) <= 1.0 + 1e-9
    assert not torch.equal(before, task.mae.encoder.patch_embed.proj.weight)  # the steps trained: backward, step ran
    lines = bench.profile_lines(
        {"masking": masking, "compiled": False, "data": "synthetic", "step_ms": 1.0, "profile": result}
    )
    assert lines[0].startswith(f"{masking} (eager, synthetic data), where an eager step's time goes (ms): masking ")
    assert len(lines) == 2 + len(top)
    assert bench.profile_lines({"masking": "x", "compiled": True, "data": "real", "profile": {"error": "boom"}}) == [
        "x (compiled, real data): no breakdown (boom)"
    ]
