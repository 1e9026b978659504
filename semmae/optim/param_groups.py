"""Weight-decay parameter groups: no decay on 1-D parameters (norms, biases) nor on the tokens a model names in
its no_weight_decay() (position embeddings, CLS and mask tokens). Delegates to timm's helper."""

from __future__ import annotations

from timm.optim import param_groups_weight_decay
from torch import nn


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    return param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)
