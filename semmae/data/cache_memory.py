"""How much memory a feature cache needs, said before it is built, and refused in one line when it would take more
than a set share of the memory it lives in (the machine's RAM for a cache on the CPU, the GPU's own memory for one
on a GPU)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from semmae.errors import ConfigError


def physical_memory() -> int:
    """Bytes of RAM of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_of(device: torch.device | str) -> tuple[int, str]:
    """(bytes, what) of the memory a cache on device occupies."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"the memory of {device}"
    return physical_memory(), "RAM"


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def cache_bytes(images: Sequence[int], views: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
    """Bytes of a cache holding, for every image of every split (images: the splits' sizes), one tensor per view
    (name -> (shape per image, dtype))."""
    per_image = sum(
        int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size() for shape, dtype in views.values()
    )
    return sum(images) * per_image


def check_cache_memory(need: int, max_share: float, device: torch.device | str, fix: str) -> str:
    """The line that says what the cache takes; a ConfigError (that line, and fix) when it is more than max_share
    (model.cache_max_ram_share) of the memory it lives in."""
    if isinstance(max_share, bool) or not isinstance(max_share, (int, float)) or not 0 < max_share <= 1:
        raise ConfigError(f"model.cache_max_ram_share={max_share!r}: must be a share in (0, 1]")
    total, what = memory_of(device)
    line = (
        f"the feature cache needs {gigabytes(need)}, {100 * need / total:.1f}% of {what} "
        f"({gigabytes(total)}; the limit is model.cache_max_ram_share={max_share:g})"
    )
    if need > max_share * total:
        raise ConfigError(f"{line}: {fix}")
    return line
