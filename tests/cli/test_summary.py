"""The summary a run ends with says what happened: a probe that ran but was never validated is 'not measured', not
'disabled'."""

import pytest

from tests.conftest import run_entry

TINY = [
    "logger=none",
    "dataset.train_subset=64",
    "dataset.val_subset=32",
    "dataset.batch_size=32",
    "trainer.max_epochs=1",
    "backbone.depth=1",
    "callbacks.reconstruction.num_images=2",
]


@pytest.mark.parametrize(
    "extra,said",
    [
        (["trainer.limit_val_batches=0"], "(not measured: no validation epoch ran)"),
        (["model.probe.enabled=false"], "(probe disabled)"),
    ],
)
def test_the_probe_line_says_why_there_is_no_accuracy(tmp_path, fmnist_root, capsys, extra, said):
    code, err = run_entry(
        "pretrain", [*TINY, *extra, f"dataset.root={fmnist_root}", f"hydra.run.dir={tmp_path / 'run'}"]
    )
    assert code == 0, err
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("online probe accuracy"))
    assert line.endswith(said)


def test_the_model_summary_counts_parameters_not_a_zero_of_flops(tmp_path, fmnist_root):
    import logging

    from semmae.callbacks import model_summary

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    model_summary.log.addHandler(handler)
    try:
        code, err = run_entry("pretrain", [*TINY, f"dataset.root={fmnist_root}", f"hydra.run.dir={tmp_path / 'run'}"])
    finally:
        model_summary.log.removeHandler(handler)
    assert code == 0, err
    summary = "\n".join(line for line in lines if "Total params" in line)
    assert "Trainable params" in summary and "FLOPs" not in summary and "Flops" not in summary
