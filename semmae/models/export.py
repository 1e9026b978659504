"""Writing an encoder for others to load: its state dict in timm's names with its geometry recorded (.pth, or
.safetensors with the record in the file's metadata) and the one line that loads it into timm; or a Hugging Face
ViTMAE directory (config.json + model.safetensors) that transformers' ViTMAEModel.from_pretrained loads. An encoder
with gated attention has no timm or Hugging Face counterpart: its file loads in semmae only, and that is said."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semmae.errors import CheckpointError
from semmae.models import hf_format
from semmae.models.encoder import ViTEncoder
from semmae.utils.atomic import atomic_write, atomic_write_dir

TIMM_NORM_EPS = 1e-6  # timm's VisionTransformer LayerNorm
NO_TIMM_GATE = (
    "timm's VisionTransformer has no attention gate (attn_gate): this file loads in semmae (ckpt=FILE), not in timm"
)


def head_layout(encoder: ViTEncoder) -> dict[str, Any]:
    return {
        "num_classes": int(encoder.num_classes),
        "global_pool": encoder.global_pool,
        "fc_norm": not isinstance(encoder.fc_norm, nn.Identity),
    }


def timm_kwargs(encoder: ViTEncoder) -> dict[str, Any]:
    """timm.create_model keyword arguments that rebuild this encoder's architecture: reg_tokens when it has
    registers (timm lays them out as semmae does, [CLS, registers, patches]), init_values for LayerScale,
    no_embed_class when only the patches have position entries, and a LayerNorm of the encoder's epsilon when it is
    not timm's. CheckpointError for a gated encoder (timm has no such attention)."""
    c = encoder.config
    if c.get("attn_gate"):
        raise CheckpointError(NO_TIMM_GATE)
    kwargs = {
        k: c[k]
        for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias")
    }
    if c.get("reg_tokens"):
        kwargs["reg_tokens"] = int(c["reg_tokens"])
    if c.get("init_values"):
        kwargs["init_values"] = float(c["init_values"])
    if c.get("no_embed_class"):
        kwargs["no_embed_class"] = True
    if float(c.get("norm_eps", TIMM_NORM_EPS)) != TIMM_NORM_EPS:
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=float(c["norm_eps"]))
    return {**kwargs, **head_layout(encoder)}


def kwarg_text(value: Any) -> str:
    if isinstance(value, partial):
        return f"functools.partial(torch.nn.LayerNorm, eps={value.keywords['eps']!r})"
    return repr(value)


def timm_load_line(encoder: ViTEncoder, path: str | Path) -> str:
    """The one line that loads an exported encoder into timm (for a gated encoder: the line that says it cannot)."""
    if encoder.config.get("attn_gate"):
        return NO_TIMM_GATE
    kwargs = timm_kwargs(encoder)
    text = ", ".join(f"{k}={kwarg_text(v)}" for k, v in kwargs.items())
    weights = (
        f'safetensors.torch.load_file("{path}")'
        if str(path).endswith(".safetensors")
        else f'torch.load("{path}")["model"]'
    )
    imports = "import functools; " if "norm_layer" in kwargs else ""
    return f'{imports}model = timm.create_model("vit_base_patch16_224", {text}); model.load_state_dict({weights})'


def record_kwargs(encoder: ViTEncoder) -> dict[str, Any] | None:
    """timm_kwargs as JSON (the LayerNorm as its epsilon); None for a gated encoder."""
    if encoder.config.get("attn_gate"):
        return None
    kwargs = timm_kwargs(encoder)
    if "norm_layer" in kwargs:
        kwargs["norm_layer"] = {"LayerNorm": {"eps": kwargs["norm_layer"].keywords["eps"]}}
    return kwargs


def export_encoder(encoder: ViTEncoder, path: str | Path, source: str | None = None) -> Path:
    """Write the encoder's state dict (timm names) with its geometry: .pth -> {"model": state, "semmae": record};
    .safetensors -> the tensors, with the record in the file's metadata. Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "kind": "encoder",
        "model": dict(encoder.config),
        "head": head_layout(encoder),
        "source": source,
        "timm_kwargs": record_kwargs(encoder),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        text = json.dumps(record, allow_nan=False)
        return atomic_write(path, lambda fh: fh.write(save(state, metadata={"semmae": text})))
    return atomic_write(path, lambda fh: torch.save({"model": state, "semmae": record}, fh))


def hf_refusal(encoder: ViTEncoder) -> str | None:
    """Why transformers' ViTMAEModel cannot hold this encoder, or None."""
    c = encoder.config
    reasons = [
        "gated attention (attn_gate)" if c.get("attn_gate") else "",
        f"{c['reg_tokens']} register tokens" if c.get("reg_tokens") else "",
        "LayerScale" if c.get("init_values") else "",
        "no position entries for its CLS token (no_embed_class)" if c.get("no_embed_class") else "",
        "a classification head or fc_norm pooling (a fine-tuned encoder)"
        if encoder.num_classes or not isinstance(encoder.fc_norm, nn.Identity) or isinstance(encoder.norm, nn.Identity)
        else "",
    ]
    reasons = [r for r in reasons if r]
    if not reasons:
        return None
    return (
        f"format=hf writes a transformers ViTMAEModel, which has no {' and no '.join(reasons)}: export this "
        "encoder as a .pth or .safetensors file (format=timm), which semmae reads back"
    )


def export_hf(encoder: ViTEncoder, directory: str | Path) -> Path:
    """Write a Hugging Face ViTMAE directory (config.json + model.safetensors, 4.x names) that
    transformers.ViTMAEModel.from_pretrained loads; the LayerNorm epsilon is the encoder's. Written atomically: a
    temp directory beside it, renamed into place."""
    why = hf_refusal(encoder)
    if why:
        raise CheckpointError(why)
    return atomic_write_dir(directory, hf_format.hf_files(encoder.config, encoder.state_dict()))


def hf_load_line(directory: str | Path) -> str:
    return f'model = transformers.ViTMAEModel.from_pretrained("{directory}", mask_ratio=0.0)'
