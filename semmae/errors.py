"""Errors that mean "the user asked for something we cannot do": reported as one line, exit code 2."""


class SemmaeError(Exception):
    """Base class: a problem with the user's input (config, paths, data), not a bug."""


class ConfigError(SemmaeError, ValueError):
    """An invalid configuration value; the message names the key and the fix."""


class DataError(SemmaeError, FileNotFoundError):
    """Data that cannot be found or read; the message says how to get it."""


class CheckpointError(SemmaeError, ValueError):
    """A checkpoint that cannot be read or does not match the model."""


def find_semmae_error(exc: BaseException) -> SemmaeError | None:
    """Walk the cause/context chain (Hydra's instantiate wraps exceptions) for a SemmaeError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, SemmaeError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
