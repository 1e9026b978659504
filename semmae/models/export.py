"""Writing an encoder for others to load: its state dict in timm's names with its geometry recorded (.pth, or
.safetensors with the record in the file's metadata), and the one line that loads it into timm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semmae.models.encoder import ViTEncoder
from semmae.utils.atomic import atomic_write


def head_layout(encoder: ViTEncoder) -> dict[str, Any]:
    return {"num_classes": int(encoder.num_classes), "global_pool": encoder.global_pool,
            "fc_norm": not isinstance(encoder.fc_norm, nn.Identity)}


def timm_kwargs(encoder: ViTEncoder) -> dict[str, Any]:
    """timm.create_model keyword arguments that rebuild this encoder's architecture (reg_tokens when it has
    registers: timm lays them out as semmae does, [CLS, registers, patches], each with a position entry)."""
    c = encoder.config
    regs = {"reg_tokens": int(c["reg_tokens"])} if c.get("reg_tokens") else {}
    return {**{k: c[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                                 "mlp_ratio", "qkv_bias")}, **regs, **head_layout(encoder)}


def timm_load_line(encoder: ViTEncoder, path: str | Path) -> str:
    """The one line that loads an exported encoder into timm."""
    kwargs = ", ".join(f"{k}={v!r}" for k, v in timm_kwargs(encoder).items())
    weights = (f'safetensors.torch.load_file("{path}")' if str(path).endswith(".safetensors")
               else f'torch.load("{path}")["model"]')
    return f'model = timm.create_model("vit_base_patch16_224", {kwargs}); model.load_state_dict({weights})'


def export_encoder(encoder: ViTEncoder, path: str | Path, source: str | None = None) -> Path:
    """Write the encoder's state dict (timm names) with its geometry: .pth -> {"model": state, "semmae": record};
    .safetensors -> the tensors, with the record in the file's metadata. Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"kind": "encoder", "model": dict(encoder.config), "head": head_layout(encoder), "source": source,
              "timm_kwargs": timm_kwargs(encoder)}
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        return atomic_write(path, lambda fh: fh.write(save(state, metadata={"semmae": json.dumps(record)})))
    return atomic_write(path, lambda fh: torch.save({"model": state, "semmae": record}, fh))
