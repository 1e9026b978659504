"""Reading a checkpoint without running its code. torch.load with weights_only=True rebuilds tensors, containers
and plain values only; a pickle that names any other function or class (a crafted file can name os.system) is
refused with one line that names the file and what it would have run. `trust_checkpoint=true` on the command line,
typed by the user for a file they trust, is the only way to unpickle such a file in full."""

from __future__ import annotations

import _compat_pickle
import argparse
import io
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from semmae.errors import CheckpointError

TRUST_OVERRIDE = "trust_checkpoint=true"
# Plain-value classes that published checkpoints carry and that rebuild without running code: the official MAE
# scripts save their command-line arguments (an argparse.Namespace) beside the weights.
SAFE_CLASSES = [argparse.Namespace]
# torch's weights-only loader names the global it refused in one of these ways (older and newer torch releases)
_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")
# torch.save writes pickle protocol 2 with Python 2 module names (subprocess -> commands); os functions are posix's
PY3_MODULES = {**_compat_pickle.IMPORT_MAPPING, "posix": "os", "nt": "os"}
STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING")


def readable_name(name: str) -> str:
    """A pickled global as Python 3 calls it: commands.call -> subprocess.call, posix.system -> os.system."""
    module, _, attr = name.rpartition(".")
    return f"{PY3_MODULES.get(module, module)}.{attr}" if module else name


def pickle_streams(path: Path) -> list[bytes]:
    """The pickles of a torch file: data.pkl (and any other .pkl) of the zip format, else the whole file (the legacy
    format and raw pickles, whose several pickles follow each other)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return [zf.read(n) for n in zf.namelist() if n.endswith(".pkl")]
    return [path.read_bytes()]


def pickled_globals(path: Path) -> list[str]:
    """Every function or class the pickles in path name (GLOBAL, STACK_GLOBAL), read with pickletools: nothing runs."""
    found = []
    for data in pickle_streams(path):
        buf = io.BytesIO(data)
        while buf.tell() < len(data):
            start, strings, memo = buf.tell(), [], {}
            try:
                for op, arg, _ in pickletools.genops(buf):
                    if op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
                    elif op.name in STRING_OPS:
                        strings.append(str(arg))
                    elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                        memo[arg] = strings[-1]
                    elif op.name == "MEMOIZE" and strings:
                        memo[len(memo)] = strings[-1]
                    elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                        strings.append(memo[arg])
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
            except Exception:  # not a pickle from here on (the legacy format's raw storage bytes)
                break
            if buf.tell() == start:
                break
    return found


def unsafe_global(path: Path) -> str | None:
    """The first global in path that the weights-only loader does not allow, as Python 3 names it; None if none."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # a torch without the private list: allow torch's own and container classes
        allowed = set()
    allowed |= {f"{c.__module__}.{c.__qualname__}" for c in SAFE_CLASSES}
    try:
        names = pickled_globals(path)
    except OSError:
        return None
    for name in names:
        if name not in allowed and not (not allowed and name.startswith(("torch.", "collections."))):
            return readable_name(name)
    return None


def refusal(path: Path, exc: BaseException) -> str:
    """The one line that says why `path` was not loaded safely, naming what unpickling it would have run."""
    text = str(exc)
    found = _GLOBAL.search(text)
    name = readable_name(found.group(1)) if found else unsafe_global(path)
    if name:
        return (
            f"{path} was not loaded: it holds a reference to {name}, which unpickling would run as code "
            f"(semmae only reads tensors and plain values from checkpoints); if you trust whoever wrote the file, "
            f"add {TRUST_OVERRIDE}"
        )
    detail = next(
        (line.strip() for line in text.split("WeightsUnpickler error:")[-1].splitlines() if line.strip()),
        type(exc).__name__,
    )
    return (
        f"cannot read checkpoint {path}: it is not a file torch.save wrote, or it is damaged (the safe loader "
        f"stopped at: {detail}); a pickle you wrote yourself loads with {TRUST_OVERRIDE}"
    )


def load_file(path: str | Path, trust: bool = False, mmap: bool = False) -> Any:
    """torch.load of `path` on the CPU: weights only unless `trust`; CheckpointError (one line) for a missing, empty,
    truncated, foreign or unsafe file. mmap: tensors stay in the file until read (a cheap look at a large
    checkpoint's plain entries)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (an interrupted copy or save?)")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(SAFE_CLASSES), warnings.catch_warnings():
            # a raw pickle makes torch warn about its protocol before refusing it; the refusal is the one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if trust:
            raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
        raise CheckpointError(refusal(path, exc)) from exc
    except Exception as exc:  # truncated zip, wrong magic, unreadable file; garbage can fail the unpickler anyhow
        first = str(exc).split(". ")[0].strip() or type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: damaged or truncated, or not a file torch.save wrote ({first})"
        ) from exc
