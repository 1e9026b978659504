"""Lightning's checkpoint writer made atomic where it is not: TorchCheckpointIO writes through an fsspec
transaction, whose temp file lives in $TMPDIR and is *copied* over the target when $TMPDIR is on another
filesystem (usual on clusters), so a kill during the copy leaves a corrupt last.ckpt and no good one.
AtomicCheckpointIO writes every checkpoint through semmae.utils.atomic instead (temp file beside the target,
fsync, rename)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from semmae.errors import StorageError
from semmae.utils.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # object storage: its own put is atomic, there is no directory to rename in
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        try:
            atomic_write(path, lambda fh: torch.save(checkpoint, fh))
        except StorageError as exc:
            good = last_good_checkpoint(Path(path))
            kept = f"the last good checkpoint is {good}" if good else "no earlier checkpoint of the run is on disk"
            raise StorageError(f"{str(exc).split('; the earlier')[0]}; {kept}") from exc


def last_good_checkpoint(path: Path) -> Path | None:
    """After a failed write of path: path itself if it is there (the atomic write kept the old file), else the
    newest other checkpoint beside it."""
    if path.is_file():
        return path
    others = sorted(path.parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if path.parent.is_dir() else []
    return others[-1] if others else None
