"""The probes of a run collapsed over seeds and named by what varies; the table of heads x encoders."""

import statistics

import pytest

from semmae.analysis.probe_table import ProbeResult, aggregate, format_table, markdown_table, table


def result(encoder="checkpoint", head="linear", block=6, seed=0, top1=0.8):
    return ProbeResult(encoder, head, block, seed, {"test/top1": top1, "test/top5": 0.99})


def test_one_probe_keeps_the_plain_names():
    assert aggregate([result()]) == {"test/top1": 0.8, "test/top5": 0.99}


def test_names_say_what_varies_and_seeds_give_mean_and_std():
    runs = [
        result(head=h, seed=s, top1=t)
        for h, tops in (("linear", (0.7, 0.8, 0.75)), ("ep", (0.9, 0.9, 0.9)))
        for s, t in enumerate(tops)
    ]
    runs += [result(encoder="random_init", head=h, seed=s, top1=0.5) for h in ("linear", "ep") for s in range(3)]
    out = aggregate(runs)
    assert out["checkpoint/linear/test/top1"] == pytest.approx(0.75)
    assert out["checkpoint/linear/test/top1_std"] == pytest.approx(statistics.stdev([0.7, 0.8, 0.75]))
    assert out["random_init/ep/seeds"] == 3 and out["checkpoint/ep/test/top1_std"] == 0.0
    assert not any("block" in k for k in out)  # one block: not in the names


def test_table_rows_heads_then_blocks_and_columns_encoders():
    runs = [
        result(head=h, block=b, encoder=e, top1=0.6 + b / 100)
        for b in (1, 2)
        for e in ("checkpoint", "random_init")
        for h in ("linear", "knn")
    ]
    rows = table(runs, knn_k=20)
    assert rows[0] == ["probe (test top-1 %)", "checkpoint", "random init"]
    assert [r[0] for r in rows[1:]] == [
        "linear, block 1",
        "linear, block 2",
        "k-NN (k=20), block 1",
        "k-NN (k=20), block 2",
    ]
    assert rows[2][1:] == ["62.00", "62.00"]
    seeds = table([result(seed=s, top1=t) for s, t in enumerate((0.7, 0.8))])
    assert seeds[1] == ["linear", "75.00 ± 7.07"]
    assert format_table(rows).splitlines()[1].startswith("linear, block 1 ")
    assert markdown_table(rows).splitlines()[1] == "|---|---|---|"
