"""Layer-wise lr decay parameter groups for a ViT (BEiT / MAE fine-tuning): patch embedding, position embedding and
CLS token at layer 0, block i at layer i + 1, final norm / fc_norm / head at layer depth + 1; each group's lr is
scaled by decay ** (depth + 1 - layer). No weight decay on 1-D parameters nor on the model's no_weight_decay()
names. timm's param_groups_layer_decay assigns exactly these layers to a timm VisionTransformer (through its
group_matcher), so this delegates to it; each group carries its "lr_scale"."""

from __future__ import annotations

from timm.optim import param_groups_layer_decay
from torch import nn


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """-> parameter groups with "params", "weight_decay" and "lr_scale" (multiply the base lr by it)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    return param_groups_layer_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay
    )
