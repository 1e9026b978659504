"""Turning a task function into a console script: Hydra composes the config; a user error (bad override, bad
value, missing data) becomes one line on stderr and exit code 2; a failed job records why in its run directory."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semmae.cli.config_checks import check_config
from semmae.errors import find_semmae_error
from semmae.utils.atomic import atomic_write_json

USER_ERRORS = (
    "hydra.errors.ConfigCompositionException",
    "hydra.errors.MissingConfigException",
    "hydra.errors.OverrideParseException",
    "hydra.errors.InstantiationException",
    "omegaconf.errors.ConfigKeyError",
    "omegaconf.errors.ValidationError",
    "omegaconf.errors.InterpolationResolutionError",
    "omegaconf.errors.MissingMandatoryValue",
    "omegaconf.errors.ConfigAttributeError",
)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_user_error(exc: BaseException | None) -> bool:
    """True for our own errors and Hydra/OmegaConf config errors anywhere in the cause chain."""
    while exc is not None:
        if find_semmae_error(exc) is not None or any(_qualname(c) in USER_ERRORS for c in type(exc).__mro__):
            return True
        exc = exc.__cause__
    return False


def one_line(exc: BaseException) -> str:
    """A single line naming the problem (and, for Hydra errors, the fix Hydra suggests)."""
    err = find_semmae_error(exc)
    if err is not None:
        return str(err)
    parts = []
    for raw in str(exc).splitlines():
        line = raw.strip()
        if line.startswith("Config search path"):
            break
        if not line or line.startswith(("full_key:", "object_type=", "reference_type=")):
            continue
        parts.append(line.rstrip(".:") if not line.endswith(":") else line)
    text = "; ".join(parts)
    text = text.replace(":; ", ": ").replace("\t", "")
    return text or type(exc).__name__


def close_progress_bars() -> None:
    """End every open progress bar on its own line, so that nothing is printed after the error line (a bar left open
    redraws itself when the interpreter exits)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()
    sys.stdout.flush()
    sys.stderr.flush()


def report_and_exit(prog: str, exc: BaseException) -> None:
    close_progress_bars()
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
    err = find_semmae_error(exc)
    sys.exit(err.exit_code if err is not None else 2)


def finish_wandb(exit_code: int) -> None:
    """Close this job's W&B run, if one is open: the jobs of a local sweep share a process, and Lightning's
    WandbLogger would otherwise log every later job into the first job's run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def task_wrapper(fn: Callable[[Any], Any], prog: str) -> Callable[[Any], Any]:
    """Record a job's failure in its run directory (failed.json). In a single run a user error ends the process
    with one line; in a sweep the exception propagates so that Hydra marks the job failed and runs the others."""

    @functools.wraps(fn)
    def wrapped(cfg):
        try:
            check_config(cfg)
            result = fn(cfg)
            finish_wandb(0)
            return result
        except Exception as exc:
            finish_wandb(1)
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            hydra_cfg = HydraConfig.get()
            try:
                atomic_write_json(
                    Path(hydra_cfg.runtime.output_dir) / "failed.json",
                    {"error": one_line(exc), "type": type(exc).__name__, "traceback": traceback.format_exc()},
                )
            except OSError:
                pass
            if hydra_cfg.mode == RunMode.RUN and is_user_error(exc) and os.environ.get("SEMMAE_TRACEBACK") != "1":
                report_and_exit(prog, exc)
            raise

    return wrapped


# Notices the libraries print on every run that say nothing about this run: the probe's frozen encoder is in eval
# mode on purpose; PretrainTask.on_before_batch_transfer only seeds the augmentation (the datamodule's batch hooks
# still run); ResidentBatches always runs in the main process, where its __len__ is exact; torchvision's decoders
# are marked deprecated in favour of TorchCodec, and work.
KNOWN_NOTICES = (
    r"Found \d+ module\(s\) in eval mode",
    "You have overridden `on_before_batch_transfer` in `LightningModule`",
    "Your `IterableDataset` has `__len__` defined",
    r".*TorchCodec.*",
)


def quiet_known_notices() -> None:
    """For a console script: no warnings the user can do nothing about, and figures drawn without a display."""
    import warnings

    import matplotlib

    for message in KNOWN_NOTICES:
        warnings.filterwarnings("ignore", message=message)
    matplotlib.use("Agg")


def hydra_entry(config_name: str, fn: Callable[[Any], Any]) -> Callable[[], None]:
    """main() for a console script running fn(cfg) on conf/<config_name>.yaml."""

    def main() -> None:
        import hydra

        from semmae.config import config_dir, register_resolvers

        prog = f"semmae-{config_name}"
        quiet_known_notices()
        os.environ.setdefault("WANDB_MODE", "offline")
        show_traceback = os.environ.get("SEMMAE_TRACEBACK") == "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us; we report them
        register_resolvers()
        decorated = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(
            task_wrapper(fn, prog)
        )
        try:
            decorated()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if show_traceback or not is_user_error(exc):
                traceback.print_exc()
                sys.exit(1)
            report_and_exit(prog, exc)

    return main
