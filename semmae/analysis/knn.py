"""Weighted k-nearest-neighbour classification of frozen features, DINO's protocol: features are L2-normalised,
similarity is the cosine (a dot product), and each of a test image's k most similar training images votes for its
class with weight exp(similarity / T). No training; the usual quick read of a checkpoint.

The test images go through in chunks (one [chunk, N_train] similarity block at a time, float32), and the neighbours
are found once for the largest k: the votes of every smaller k are read off the same sorted list."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from semmae.errors import ConfigError

KS = (10, 20, 50)  # DINO's k = 20 and its neighbours
TEMPERATURE = 0.07


def weighted_votes(
    similarity: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """The class scores [n, C] of n test images from their neighbours' similarities and labels [n, k]: the sum of
    exp(similarity / T) over the neighbours of each class."""
    weights = (similarity.float() / temperature).exp()
    return torch.zeros(similarity.shape[0], num_classes, device=similarity.device).scatter_add_(
        1, neighbour_labels.long(), weights
    )


def check_knn(ks: Iterable[int], temperature: float, n_train: int | None = None, key: str = "model.knn") -> list[int]:
    """The ks, sorted and checked (against the training set's size, if given); a bad one is a ConfigError naming it
    (key: the settings node, e.g. model.knn)."""
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"{key}.neighbours={ks}: every k must be a whole number >= 1")
    ks = sorted(set(ks))
    if n_train is not None and ks[-1] > n_train:
        fit = [k for k in ks if k <= n_train] or [n_train]
        raise ConfigError(
            f"{key}.neighbours={ks[-1]} is more than the {n_train} training images: "
            f"choose ks of at most {n_train}, e.g. {key}.neighbours=[{','.join(map(str, fit))}]"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"{key}.temperature={temperature!r}: must be a number > 0")
    return ks


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    ks: Iterable[int] = KS,
    temperature: float = TEMPERATURE,
    chunk_size: int = 512,
) -> dict[int, torch.Tensor]:
    """-> {k: the top min(5, C) predicted classes of every test image [N_test, min(5, C)], best first}."""
    ks = check_knn(ks, temperature, len(train_labels))
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device)
    top = min(5, num_classes)
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test_features), chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].to(train.device).float(), dim=1)
        similarity, index = (test @ train.T).topk(ks[-1], dim=1)  # sorted, most similar first
        neighbours = labels[index]
        for k in ks:
            scores = weighted_votes(similarity[:, :k], neighbours[:, :k], num_classes, temperature)
            out[k].append(scores.topk(top, dim=1).indices)
    return {k: torch.cat(preds) for k, preds in out.items()}


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    ks: Iterable[int] = KS,
    temperature: float = TEMPERATURE,
    chunk_size: int = 512,
) -> dict[int, dict[str, float]]:
    """-> {k: {"top1": share of test images whose best-voted class is theirs, "top5": ... among the 5 best}}
    ("top5" only where there are at least 5 classes)."""
    preds = knn_predict(train_features, train_labels, test_features, num_classes, ks, temperature, chunk_size)
    labels = test_labels.to(next(iter(preds.values())).device).view(-1, 1)
    out = {}
    for k, top in preds.items():
        hits = top == labels
        out[k] = {"top1": hits[:, 0].float().mean().item()}
        if num_classes >= 5:
            out[k]["top5"] = hits[:, :5].any(dim=1).float().mean().item()
    return out
