"""Every command line README.md and the manual in docs/ document composes: the entry-point commands
(`semmae-<task> ...`, `python -m semmae.<task> ...`, `make <task> ARGS='...'`, in code blocks and inline) with their
task's config, and every inline span of overrides (`ckpt=null`, `analysis.tau=...`) with at least one entry point's
config.
Placeholders (PATH, DIR, N, <run>, ...) are replaced by dummy values; nothing runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO, compose

TASKS = ("pretrain", "linprobe", "finetune", "segment", "analyze", "export", "masks")
# The README is the tour and these pages the manual: their commands and spans of overrides must run as written. The
# other pages of docs/ are specifications, whose spans name settings in the code's terms: their commands must run.
MANUAL = ("README.md", "docs/usage.md", "docs/evaluation.md", "docs/studies.md")
README = (REPO / "README.md").read_text()
SPECS = [p for p in sorted((REPO / "docs").glob("*.md")) if str(p.relative_to(REPO)) not in MANUAL]
OVERRIDE = re.compile(r"^[+~]?[a-z_][\w.@/]*(<key>)?[\w.]*=")
# Spans that look like overrides but are not: generic notation, a deliberate typo shown as an error, a metric
# setting named without its node (its nodes are analysis.* and callbacks.attention_maps.*, listed below).
NOT_OVERRIDES = {
    "group=option",
    "group.key=value",
    "+model.optim.blrr=1",
    "shallow_blocks=[...]",
    "hydra.launcher.<field>=...",
}
# Spans the README names as options of semmae-analyze without a command around them, and a value for each.
OPTIONS_OF = {
    "num_images": "num_images=10",
    "batch_size": "batch_size=5",
    "figure_images": "figure_images=2",
    "device": "device=cpu",
    "names=[a,b]": "names=[a,b]",
    "analysis.tau": "analysis.tau=3.0",
    "analysis.k": "analysis.k=4",
    "analysis.flat_fraction": "analysis.flat_fraction=0.5",
    "analysis.shallow_blocks": "analysis.shallow_blocks=[1,2]",
    "analysis.vmax": "analysis.vmax=6",
}
EXTRA = [  # documented in prose, conf/ comments or error messages rather than as a span of overrides
    ("linprobe", ("ckpt=random",)),
    ("linprobe", ("+model.encoder.num_heads=4",)),
    ("linprobe", ("ckpt=timm:vit_base_patch16_224.mae", "ckpt_file=model.safetensors", "backbone=vit_base")),
    ("segment", ("ckpt=random", "trust_checkpoint=true")),
    ("analyze", ("ckpt=[null,random]", "trust_checkpoint=true")),
    (
        "pretrain",
        (
            "callbacks=[default,attention_maps]",
            "callbacks.attention_maps.shallow_blocks=[1,2]",
            "callbacks.attention_maps.tau=3",
        ),
    ),
]
PLACEHOLDERS = [
    (r"<run>", "2026-01-01_00-00-00"),
    (r"<key>", "img_size"),
    (r"\[\.\.\.\]", "[1,2]"),
    (r"=\.\.\.$", "=x"),
    (r"\bPATH\b", "x.ckpt"),
    (r"\bDIR\b", "/data"),
    (r"=[NM]$", "=2"),
]


def fill(token: str) -> str:
    for pattern, value in PLACEHOLDERS:
        token = re.sub(pattern, value, token)
    return token


def split_words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # prose with an apostrophe (r')
        return text.split()


def overrides_of(text: str) -> tuple[list[str], bool]:
    """Shell words -> (the overrides, with placeholders filled; sweep lists cut to their first value; is a sweep)."""
    words = split_words(text.split(" #")[0])
    sweep = "-m" in words or "--multirun" in words
    out = []
    for word in words:
        if not OVERRIDE.match(word) or word in NOT_OVERRIDES:
            continue
        key, value = word.split("=", 1)
        if sweep and "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(fill(f"{key}={value}"))
    return out, sweep


def code_texts(text: str) -> list[str]:
    """Lines of the fenced code blocks, and the inline code spans of the prose."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    prose = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", prose)


def documented() -> tuple[list[tuple[str, list[str]]], list[list[str]]]:
    """-> (commands: (task, overrides)), (spans of overrides with no command: for any entry point)."""
    commands, spans = [], []
    manual = [line for name in MANUAL for line in code_texts((REPO / name).read_text())]
    specs = [
        line
        for path in SPECS
        for line in code_texts(path.read_text())
        if re.search(r"(?:semmae-|python -m semmae\.)\w+\b|\bmake \w+ ARGS=", line)
    ]
    for text in manual + specs:
        cmd = re.search(r"(?:semmae-|python -m semmae\.)(\w+)\b(.*)", text)
        make = re.search(r"\bmake (\w+) ARGS='([^']*)'", text)
        if cmd and cmd.group(1) in TASKS:
            commands.append((cmd.group(1), overrides_of(cmd.group(2))[0]))
        elif make and make.group(1) in TASKS:
            commands.append((make.group(1), overrides_of(make.group(2))[0]))
        elif text.strip() in OPTIONS_OF:
            commands.append(("analyze", [OPTIONS_OF[text.strip()]]))
        elif "ARGS=" not in text and " = " not in text and not text.startswith(("-", "make ")):
            words = [w for w in split_words(text) if w not in NOT_OVERRIDES]
            found = overrides_of(text)[0]
            if found and len(found) == len(words) and not any(w.split("=")[0].isupper() for w in words):
                if all(w.split("=", 1)[1] for w in found):  # `ckpt=` alone names the key, not a value
                    spans.append(found)
    unique = lambda items: list(dict.fromkeys(items))  # noqa: E731
    return unique((task, tuple(ov)) for task, ov in commands), unique(tuple(ov) for ov in spans)


COMMANDS, SPANS = documented()


def composes(task: str, overrides: list[str], tmp_path: Path):
    cfg = compose(task, overrides, tmp_path / task)
    resolvable = OmegaConf.to_container(cfg, resolve=False)
    resolvable.pop("hydra")
    OmegaConf.to_container(OmegaConf.create(resolvable), resolve=True)  # every ${...} resolves
    return cfg


def test_the_readme_documents_what_this_test_reads():
    tasks = {task for task, _ in COMMANDS}
    assert {"linprobe", "finetune", "segment", "analyze", "export", "pretrain"} <= tasks
    flat = [o for _, ov in COMMANDS for o in ov] + [o for ov in SPANS for o in ov]
    for needle in (
        "ckpt=null",
        "ckpt=random",
        "trust_checkpoint=true",
        "analysis.tau=3.0",
        "encoder.img_size=64",
        "+encoder.img_size=x",
        "callbacks=[default,attention_maps]",
        "callbacks.attention_maps.every_n_epochs=5",
    ):
        assert needle in flat, needle
    assert any(o.startswith("ckpt=[") and o.endswith(",random]") for o in flat)  # semmae-analyze 'ckpt=[PATH,random]'
    assert len(COMMANDS) >= 20 and len(SPANS) >= 20


@pytest.mark.parametrize(
    "task,overrides", COMMANDS + EXTRA, ids=lambda v: v if isinstance(v, str) else " ".join(v) or "(none)"
)
def test_every_documented_command_composes(task, overrides, tmp_path):
    composes(task, list(overrides), tmp_path)


def with_group_options(overrides: tuple[str, ...]) -> list[list[str]]:
    """The overrides, then (for a key of a group the span does not pick, e.g. dataset.skip_corrupt of
    dataset=imagenet) the same with each option of that group."""
    from semmae.config import config_dir

    out = [list(overrides)]
    for group in {o.lstrip("+~").split(".")[0] for o in overrides if "." in o.split("=")[0]}:
        folder = config_dir() / group
        if folder.is_dir() and not any(o.startswith(f"{group}=") for o in overrides):
            out += [[f"{group}={p.stem}", *overrides] for p in sorted(folder.glob("*.yaml"))]
    return out


@pytest.mark.parametrize("overrides", SPANS, ids=" ".join)
def test_every_documented_override_composes_with_some_entry_point(overrides, tmp_path):
    errors = []
    for attempt in with_group_options(overrides):
        for task in TASKS:
            try:
                composes(task, attempt, tmp_path)
                return
            except Exception as exc:  # noqa: BLE001 - collected, reported if no task takes it
                errors.append(f"{task} {' '.join(attempt)}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    pytest.fail(f"{' '.join(overrides)} composes with no entry point:\n" + "\n".join(errors))
