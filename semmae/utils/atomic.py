"""Writing a file so that a reader, or a kill at any moment, sees either the old file whole or the new one whole:
write a temp file in the same directory (so the rename never crosses a filesystem, as a copy from $TMPDIR would),
fsync it, rename it over the target, fsync the directory. Every checkpoint, results file, table and figure the
project writes goes through `atomic_write`. A process killed mid-write leaves its temp file behind; the next write
to the same target on that host removes the temp files of processes that no longer run. A directory of files (a
Hugging Face model directory) is written the same way with `atomic_write_dir`: a temp directory beside the target,
renamed into place."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from semmae.errors import ConfigError, StorageError

TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """.<name>.<host>.<pid>.tmp beside the target: one per writer, and recognisable as stale after a kill."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}{TEMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp files of `path` left by killed writers on this host; -> the files removed."""
    host, removed = socket.gethostname(), []
    for tmp in path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"):
        owner = tmp.name[len(path.name) + 2 : -len(TEMP_SUFFIX)]  # <host>.<pid>
        owner_host, _, pid = owner.rpartition(".")
        if owner_host == host and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.EIO: "input/output error",
}


def storage_reason(exc: BaseException) -> str | None:
    """What about the machine's storage stopped a write, or None if it was something else. torch.save reports a
    full disk as a RuntimeError from its zip writer whose text carries the OS message."""
    for err in (exc, exc.__cause__, exc.__context__):
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return STORAGE_ERRNOS[err.errno]
        if isinstance(err, RuntimeError) and "No space left on device" in str(err):
            return STORAGE_ERRNOS[errno.ENOSPC]
    return None


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem that path is on (the 'device' a full disk is)."""
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(binary file) on a temp file beside `path`, make it durable, rename it to `path`. A write the
    storage refuses (full, read-only, forbidden) is a StorageError naming the filesystem and what was kept."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
    except OSError as exc:
        raise storage_error(exc, path) from exc
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if storage_reason(exc) is not None:
            raise storage_error(exc, path) from exc
        raise
    _fsync_dir(path.parent)
    return path


def storage_error(exc: BaseException, path: Path) -> BaseException:
    """exc as one line (StorageError) when the storage refused the write, else exc itself."""
    reason = storage_reason(exc)
    if reason is None:
        return exc
    kept = f"; the earlier {path.name} is kept whole" if path.is_file() else ""
    return StorageError(
        f"{reason} on {mount_point(path.parent if path.parent.exists() else Path('/'))} while writing {path}{kept}"
    )


def atomic_write_dir(path: str | Path, files: Mapping[str, Callable[[IO[bytes]], Any]]) -> Path:
    """Write the directory `path` holding `files` ({name: write(binary file)}): each file is written and fsynced in a
    temp directory beside `path`, which is then renamed to `path`; a reader sees no half-written file. An existing
    `path` is replaced only if it holds nothing but files of these names (an earlier write of the same directory):
    it is renamed aside, the new one renamed in, the old one removed. Anything else at `path` is refused. A write the
    storage refuses is a StorageError, as in atomic_write."""
    path = Path(path)
    if path.exists() and not (
        path.is_dir() and not path.is_symlink() and all(p.is_file() and p.name in files for p in path.iterdir())
    ):
        raise ConfigError(
            f"{path} exists and holds other things than {', '.join(sorted(files))}: "
            "choose a new directory, or remove it first"
        )
    aside = path.with_name(path.name + ".old")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        remove_stale_temps(aside)
    except OSError as exc:
        raise storage_error(exc, path) from exc
    tmp, old = temp_path(path), temp_path(aside)
    try:
        tmp.mkdir()
        for name, write in files.items():
            with open(tmp / name, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        if storage_reason(exc) is not None:
            raise storage_error(exc, path) from exc
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def strict_json(value: Any) -> Any:
    """value with every non-finite float (NaN, inf: not JSON) replaced by None, so that json.dumps(allow_nan=False)
    writes it; floats are Python floats (torch / numpy scalars are converted)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a 0-d torch tensor or numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    """payload as strict JSON (non-finite numbers become null), written atomically."""
    return atomic_write_text(path, json.dumps(strict_json(payload), indent=2, default=str, allow_nan=False) + "\n")
