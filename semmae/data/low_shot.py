"""Low-shot training sets (`dataset.train_per_class=N`): N images of every class, drawn at random within each class
from a seed. For one seed the draws are nested: the N-image set of a class is the first N of one seeded order of
its images, so the 1-shot set lies inside the 2-shot set, and so on (a low-shot curve grows one training set)."""

from __future__ import annotations

import torch

from semmae.errors import ConfigError


def check_per_class(per_class: int | None) -> int | None:
    if per_class is None:
        return None
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"dataset.train_per_class={per_class!r}: must be a whole number >= 1 (null: every image)")
    return per_class


def class_balanced_subset(labels: torch.Tensor, per_class: int, seed: int) -> list[int]:
    """Sorted indices of per_class images of every class that occurs in labels [N], drawn from seed. More than the
    smallest class holds is a ConfigError that names it."""
    per_class = check_per_class(per_class)
    labels = torch.as_tensor(labels).long().cpu()
    classes, counts = labels.unique(return_counts=True)
    smallest = int(counts.argmin())
    if per_class > int(counts[smallest]):
        raise ConfigError(
            f"dataset.train_per_class={per_class} is more than the {int(counts[smallest])} training "
            f"images of class {int(classes[smallest])}, the smallest: lower it to at most that"
        )
    g = torch.Generator().manual_seed(int(seed) * 7919 + 101)
    order = torch.randperm(len(labels), generator=g)
    order = order[labels[order].argsort(stable=True)]  # grouped by class, in the seeded order within each
    starts = torch.cumsum(counts, 0) - counts
    picks = (starts.view(-1, 1) + torch.arange(per_class).view(1, -1)).flatten()
    return order[picks].sort().values.tolist()
