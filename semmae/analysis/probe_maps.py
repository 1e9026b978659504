"""The figure of an attentive probe's attention over the patches: one row per image, the image overlaid with the
mean of the head's query maps and then the maps of single queries (the most peaked ones first: EP's queries learn
complementary parts), on the colour scale of the attention figures (1 = the fair share of a patch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from semmae.analysis.figures import attention_grid, display_images


def shown_queries(attention: torch.Tensor, count: int) -> list[int]:
    """Up to count queries of attention [n, M, P], the most peaked first (largest mean maximum over the images)."""
    peak = attention.amax(dim=-1).mean(dim=0)  # [M]
    return peak.argsort(descending=True)[:count].tolist()


def probe_attention_figure(
    images: torch.Tensor,
    attention: torch.Tensor,
    grid_size: tuple[int, int],
    title: str,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    queries: int = 7,
):
    """images [n, C, H, W] (model input), attention [n, M, P] (rows sum to 1) -> the figure."""
    n, m, p = attention.shape
    attention = attention.float().cpu()
    picked = shown_queries(attention, queries) if m > 1 else []
    maps = torch.cat([attention.mean(dim=1, keepdim=True), attention[:, picked]], dim=1) * p  # fair share = 1
    titles = ["mean of the queries" if m > 1 else "the query", *(f"query {q + 1}" for q in picked)]
    return attention_grid(
        display_images(images, mean, std),
        maps,
        grid_size,
        title,
        col_titles=titles,
        colorbar_label="attention x patches (1 = fair share)",
    )
