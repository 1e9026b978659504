"""Errors whose message is the one line a user sees: what the user asked for that cannot be done (exit code 2), a
run that diverged (3), a fault of the machine the run is on (1), a run stopped by a signal (128 + the signal)."""


class SemmaeError(Exception):
    """Base class: a problem with the user's input (config, paths, data), not a bug."""

    exit_code = 2

    def __init__(self, message: str = ""):
        super().__init__(_worker_original(str(message), type(self)))


def _worker_original(message: str, cls: type) -> str:
    """A SemmaeError raised in a DataLoader worker is rebuilt in the main process as cls("Caught <cls> in DataLoader
    worker process N.\nOriginal Traceback ...\n<module>.<cls>: <message>"): keep its own one-line message."""
    if not message.startswith(f"Caught {cls.__name__} in DataLoader worker") or "\nOriginal Traceback" not in message:
        return message
    prefix = f"{cls.__module__}.{cls.__qualname__}: "
    last = message.rstrip().splitlines()[-1]
    return last[len(prefix) :] if last.startswith(prefix) else message


class ConfigError(SemmaeError, ValueError):
    """An invalid configuration value; the message names the key and the fix."""


class DataError(SemmaeError, FileNotFoundError):
    """Data that cannot be found or read; the message says how to get it."""


class CheckpointError(SemmaeError, ValueError):
    """A checkpoint that cannot be read or does not match the model."""


class NoCheckpointError(CheckpointError, ConfigError):
    """ckpt=latest found no checkpoint: a missing checkpoint and a config value to change (ckpt=PATH, ckpt=null)."""


class DivergedError(SemmaeError, ArithmeticError):
    """Training produced a non-finite loss: the run stops (exit code 3) and keeps its last finite checkpoint."""

    exit_code = 3


class StorageError(SemmaeError, OSError):
    """The machine cannot store what the run writes (no space left, a read-only or forbidden directory): an
    environment fault, not a bad setting; the message names the path and what was kept."""

    exit_code = 1


class StoppedError(SemmaeError):
    """A run stopped by a signal after saving its last checkpoint; the message says where it is and how to resume."""

    def __init__(self, message: str = "", signum: int = 15):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def find_semmae_error(exc: BaseException) -> SemmaeError | None:
    """Walk the cause/context chain (Hydra's instantiate wraps exceptions) for a SemmaeError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SemmaeError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
