"""Splitting a recipe's total batch over the hardware: per-device batch x devices x nodes x gradient accumulation
= total batch. Registered as OmegaConf resolvers (per_device_batch, grad_accum) so that a preset states the
recipe's total batch once and the split follows the device count:
    dataset.batch_size: ${per_device_batch:4096,${trainer.devices},${trainer.num_nodes},64}
    trainer.accumulate_grad_batches: ${grad_accum:4096,${trainer.devices},${trainer.num_nodes},64}"""

from __future__ import annotations

from collections.abc import Sequence

from semmae.errors import ConfigError


def device_count(devices: int | str | None) -> int:
    """trainer.devices as a number: an int, a list's length, or "auto"/-1 = every visible GPU (1 without GPUs)."""
    if isinstance(devices, Sequence) and not isinstance(devices, str):  # a list of device ids
        return len(devices)
    if devices in (None, "auto", -1, "-1"):
        import torch

        return max(1, torch.cuda.device_count())
    try:
        n = int(devices)
    except (TypeError, ValueError):
        raise ConfigError(f"trainer.devices={devices!r} is not a device count (an int, a list or 'auto')") from None
    if n < 1:
        raise ConfigError(f"trainer.devices must be >= 1, got {n}")
    return n


def split_batch(total: int, devices: int | str | None, nodes: int | None, max_per_device: int) -> tuple[int, int]:
    """-> (per-device batch, accumulation steps): the fewest accumulation steps whose per-device batch is at most
    max_per_device and divides the total exactly."""
    total, max_per_device = int(total), int(max_per_device)
    replicas = device_count(devices) * int(nodes or 1)
    if total < 1 or max_per_device < 1:
        raise ConfigError(f"batch sizes must be >= 1 (total {total}, max per device {max_per_device})")
    if total % replicas:
        raise ConfigError(
            f"total batch {total} does not split over {replicas} devices: choose a device count "
            f"that divides it, or change the preset's batch.total"
        )
    per_replica = total // replicas
    accum = next(a for a in range(1, per_replica + 1) if per_replica % a == 0 and per_replica // a <= max_per_device)
    return per_replica // accum, accum


def per_device_batch(total, devices, nodes, max_per_device) -> int:
    return split_batch(total, devices, nodes, max_per_device)[0]


def grad_accum(total, devices, nodes, max_per_device) -> int:
    return split_batch(total, devices, nodes, max_per_device)[1]
