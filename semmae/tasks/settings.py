"""A task's settings node (model.optim, model.probe, ...) checked against the settings the task knows: an unknown key
(a typo such as +model.optim.blrr=1) or a negative or non-numeric rate is one line naming the key."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from semmae.errors import ConfigError

POSITIVE = ("blr", "lr")  # learning rates
NON_NEGATIVE = (
    "weight_decay",
    "min_lr",
    "warmup_epochs",
    "warmup_steps",
    "momentum",
    "layer_decay",
    "power",
    "trust_coefficient",
    "batch_fraction",
    "aux_weight",
    "label_smoothing",
    "mixup_alpha",
    "cutmix_alpha",
)


def settings(group: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """A task's settings node (model.optim, model.probe, ...): the defaults updated with what the config gives. A key
    the task does not know (a typo such as +model.optim.blrr=1) and a negative or non-numeric rate are ConfigErrors
    that name the key, instead of a setting silently ignored or a traceback from the optimiser."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        near = difflib.get_close_matches(unknown[0], list(defaults), n=1)
        hint = f"did you mean {group}.{near[0]}? " if near else ""
        raise ConfigError(
            f"{group}.{unknown[0]} is not a setting of this task: {hint}{group} takes {', '.join(sorted(defaults))}"
        )
    out = {**defaults, **given}
    for key in (*POSITIVE, *NON_NEGATIVE):
        value = out.get(key)
        if key not in given or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{group}.{key} must be a number, got {value!r}")
        if (key in POSITIVE and not value > 0) or value < 0:
            raise ConfigError(f"{group}.{key}={value}: must be {'> 0' if key in POSITIVE else '>= 0'}")
    return out
