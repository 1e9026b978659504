"""Reading a checkpoint without running its code. torch.load with weights_only=True rebuilds tensors, containers
and plain values only; a pickle that names any other function or class (a crafted file can name os.system) is
refused with one line that names the file and what it would have run. `trust_checkpoint=true` on the command line,
typed by the user for a file they trust, is the only way to unpickle such a file in full."""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from semmae.errors import CheckpointError

TRUST_OVERRIDE = "trust_checkpoint=true"
# Plain-value classes that published checkpoints carry and that rebuild without running code: the official MAE
# scripts save their command-line arguments (an argparse.Namespace) beside the weights.
SAFE_CLASSES = [argparse.Namespace]
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def refusal(path: Path, exc: BaseException) -> str:
    """The one line that says why `path` was not loaded safely."""
    text = str(exc)
    found = _GLOBAL.search(text)
    if found:
        return (f"{path} was not loaded: it holds a reference to {found.group(1)}, which unpickling would run as code "
                f"(semmae only reads tensors and plain values from checkpoints); if you trust whoever wrote the file, "
                f"add {TRUST_OVERRIDE}")
    detail = next((line.strip() for line in text.split("WeightsUnpickler error:")[-1].splitlines() if line.strip()),
                  type(exc).__name__)
    return (f"cannot read checkpoint {path}: it is not a file torch.save wrote, or it is damaged (the safe loader "
            f"stopped at: {detail}); a pickle you wrote yourself loads with {TRUST_OVERRIDE}")


def load_file(path: str | Path, trust: bool = False) -> Any:
    """torch.load of `path` on the CPU: weights only unless `trust`; CheckpointError (one line) for a missing, empty,
    truncated, foreign or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (an interrupted copy or save?)")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_CLASSES):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if trust:
            raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
        raise CheckpointError(refusal(path, exc)) from exc
    except Exception as exc:  # truncated zip, wrong magic, unreadable file; garbage can fail the unpickler anyhow
        first = str(exc).split(". ")[0].strip() or type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: damaged or truncated, or not a file torch.save wrote "
                              f"({first})") from exc
