"""Writing a file so that a reader, or a kill at any moment, sees either the old file whole or the new one whole:
write a temp file in the same directory (so the rename never crosses a filesystem, as a copy from $TMPDIR would),
fsync it, rename it over the target, fsync the directory. Every checkpoint, results file, table and figure the
project writes goes through `atomic_write`. A process killed mid-write leaves its temp file behind; the next write
to the same target on that host removes the temp files of processes that no longer run."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import IO, Any, Callable

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


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call write(binary file) on a temp file beside `path`, make it durable, rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
