"""Optimisation helpers: lr scaling rule, warmup + cosine / poly schedules, parameter groups."""

from semmae.optim.param_groups import weight_decay_groups
from semmae.optim.scaling import scaled_lr
from semmae.optim.schedule import warmup_cosine, warmup_poly

__all__ = ["scaled_lr", "warmup_cosine", "warmup_poly", "weight_decay_groups"]
