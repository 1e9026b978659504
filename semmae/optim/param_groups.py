"""Weight-decay parameter groups (timm's helper): no decay on 1-D parameters and biases, nor, unless decay_tokens, on
the tokens a model names in its no_weight_decay() (CLS and mask tokens; the sin-cos position embeddings are frozen).
MAE's pretraining (main_pretrain.py, timm's old add_weight_decay) decays the tokens: decay_tokens=True is that rule."""

from __future__ import annotations

from timm.optim import param_groups_weight_decay
from torch import nn


def weight_decay_groups(model: nn.Module, weight_decay: float, *, decay_tokens: bool) -> list[dict]:
    """decay_tokens has no default: its value is the optim group's (conf/optim/*.yaml), stated once."""
    skip = set() if decay_tokens or not hasattr(model, "no_weight_decay") else model.no_weight_decay()
    return param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)
