"""Reading encoder weights from any source into EncoderWeights (geometry + state dict in timm names), the first half
of the one loading path (semmae.models.loading builds the encoder from them):

  source                                   what it holds
  semmae pretraining checkpoint (.ckpt)    ckpt["semmae"] (kind "pretrain", geometry), weights under mae.encoder.*
  semmae fine-tune / linprobe (.ckpt)      kind "finetune" / "linprobe", weights under encoder.*
  semmae segmentation (.ckpt)              kind "segment", weights under segmenter.encoder.*
                                           (every task records its encoder's key prefix: one rule reads them all)
  exported encoder (semmae-export)         {"model": timm state dict, "semmae": {"kind": "encoder", geometry}}
                                           (.pth; or .safetensors with the same record in the file's metadata)
  official MAE checkpoint (.pth)           {"model": MAE state dict, ...}; decoder_* and mask_token are dropped
  any ViT state dict                       timm / MAE names, under any prefix (module., encoder., ...)
  "timm:MODEL_NAME" + weights_file         a timm model name (its architecture) and a local weights file (ViTs with
                                           registers and LayerScale too, e.g. DINOv2's: timm's no_embed_class)
  "hf:DIR", or a DIR with config.json      a Hugging Face transformers ViT or ViTMAE (semmae.models.hf_format)
  "latest"                                 the newest outputs/pretrain/*/checkpoints/last.ckpt (or multirun/)
                                           (semmae.models.sources: find_latest(root, pattern) for any glob)
  null, or "random"                        no weights: the encoder of a freshly initialised MAE (random_encoder)

The format is detected from the file's contents; the geometry is read from a semmae record (or a Hugging Face
config.json) where there is one and inferred from the tensor shapes otherwise. What the weights hold decides over a
record: registers (reg_token), the attention gate (blocks.N.attn.gate), LayerScale (blocks.N.ls1.gamma) and whether the
prefix tokens have position entries."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semmae.errors import CheckpointError
from semmae.models import hf_format
from semmae.models.gated_attention import has_gated_attention
from semmae.utils.safe_load import load_file

# ViTEncoder arguments a backbone group sets (random_encoder reads them) ...
ENCODER_KEYS = (
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "reg_tokens",
    "attn_gate",
)
# ... and those only foreign weights set: read from a record, never from a backbone group
FOREIGN_KEYS = ("qkv_bias", "norm_eps", "init_values", "no_embed_class")
LAYER_SCALE_INIT = 1e-5  # init_values of an encoder rebuilt for LayerScale weights (the loaded gammas replace it)
HEAD_KEYS = ("num_classes", "global_pool", "fc_norm")
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # ViT-Ti/S/B/L/H, the widths MAE and timm publish
# Where the encoder's weights sit in a task's state dict: every task records it (checkpoint["semmae"]
# ["encoder_prefix"]); files written before it did are read by their kind.
LEGACY_PREFIXES = {"encoder": "", "pretrain": "mae.encoder.", "segment": "segmenter.encoder."}
ANCHOR = "patch_embed.proj.weight"  # every ViT state dict has it; its prefix is the encoder's prefix


@dataclass
class EncoderWeights:
    config: dict[str, Any]  # ViTEncoder arguments the source fixes: geometry (and head layout, for fine-tuned models)
    state: dict[str, torch.Tensor]
    kind: str  # pretrain | finetune | linprobe | encoder | mae | state_dict | timm | hf
    origin: str  # for messages: the path, timm:NAME (file) or hf:DIR
    guessed: tuple[str, ...] = field(default=())  # config keys inferred, not recorded (an override may set them)


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """A checkpoint file -> its contents; CheckpointError if it is missing, unreadable or unsafe. torch files load
    with weights_only (safe_load: nothing in them runs) unless the user trusts the file; a .safetensors file gives
    its tensors, or {"model": tensors, "semmae": record} when it carries a semmae record."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return load_file(path, trust=trust)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            meta = fh.metadata() or {}
        return {"model": tensors, "semmae": json.loads(meta["semmae"])} if "semmae" in meta else tensors
    except Exception as exc:  # truncated file, not a safetensors file, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def strip_to_encoder(state: Mapping[str, Any], origin: str) -> dict[str, torch.Tensor]:
    """Keep the keys under the prefix of the patch projection (module., encoder., model., ...), prefix removed."""
    anchors = [k for k in state if k.endswith(ANCHOR)]
    if not anchors:
        sample = ", ".join(list(state)[:6])
        raise CheckpointError(f"{origin} holds no ViT encoder weights (no '{ANCHOR}'); its keys start: {sample}")
    prefix = min(anchors, key=len)[: -len(ANCHOR)]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and torch.is_tensor(v)}


def num_registers(state: Mapping[str, torch.Tensor]) -> int:
    """Register tokens of a ViT state dict: timm's reg_token [1, R, D] (absent without registers)."""
    reg = state.get("reg_token")
    return int(reg.shape[1]) if reg is not None and reg.ndim == 3 else 0


def block_layout(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What the weights say about the blocks and tokens, whatever a record says: registers, the head-wise attention
    gate (its rows are the heads), LayerScale, and position entries for the prefix tokens or for patches only."""
    layout: dict[str, Any] = {"reg_tokens": num_registers(state), "attn_gate": has_gated_attention(state)}
    if layout["attn_gate"]:
        layout["num_heads"] = int(state["blocks.0.attn.gate.weight"].shape[0])
    layout["init_values"] = LAYER_SCALE_INIT if "blocks.0.ls1.gamma" in state else None
    pos, prefix = state.get("pos_embed"), 1 + layout["reg_tokens"]
    if pos is not None and pos.ndim == 3:
        n = int(pos.shape[1])
        with_prefix = n > prefix and math.isqrt(n - prefix) ** 2 == n - prefix
        layout["no_embed_class"] = not with_prefix and math.isqrt(n) ** 2 == n
    return layout


def infer_geometry(state: Mapping[str, torch.Tensor], origin: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Geometry of a ViT state dict from its shapes. The number of heads is not in the shapes (but in the attention
    gate's, where there is one): it is taken from the standard widths (ViT-Ti/S/B/L/H) and reported as guessed; other
    widths need it passed in. Registers: R from reg_token's shape; timm's pos_embed then holds 1 + R prefix entries
    before the grid, or the grid alone (no_embed_class, as DINOv2 with registers)."""
    w = state[ANCHOR]
    if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise CheckpointError(f"{origin}: {ANCHOR} has shape {list(w.shape)}, expected [width, channels, p, p]")
    embed_dim, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    pos = state.get("pos_embed")
    if not blocks or pos is None:
        raise CheckpointError(f"{origin}: a ViT state dict needs blocks.N.* and pos_embed keys")
    layout = block_layout(state)
    regs = layout["reg_tokens"]
    prefix = 0 if layout.get("no_embed_class") else 1 + regs
    grid = math.isqrt(max(pos.shape[1] - prefix, 0)) if pos.ndim == 3 else 0
    if grid < 1 or grid * grid != pos.shape[1] - prefix or "cls_token" not in state:
        what = "a CLS entry" + (f" + {regs} register entries" if regs else "")
        raise CheckpointError(
            f"{origin}: pos_embed has {list(pos.shape)} entries, neither {what} + a square grid "
            "nor a square grid alone, or there is no cls_token (encoders without a class token "
            "are not supported)"
        )
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    config = dict(
        img_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=max(blocks) + 1,
        mlp_ratio=fc1.shape[0] / embed_dim if fc1 is not None else 4.0,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        **layout,
    )
    if "num_heads" in config:
        return config, ()
    if embed_dim in HEADS_BY_WIDTH:
        config["num_heads"] = HEADS_BY_WIDTH[embed_dim]
    return config, ("num_heads",)


def check_record(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], origin: str) -> None:
    """A semmae record's geometry must be its tensors' (checked before anything is built: a record altered to ask
    for depth=100000 or img_size=32000 would otherwise allocate that model first)."""
    shapes, guessed = infer_geometry(state, origin)
    differ = [
        f"{k}={config[k]!r} (its tensors: {shapes[k]!r})"
        for k in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "qkv_bias")
        if k in config and config[k] != shapes[k]
    ]
    ratio = config.get("mlp_ratio", shapes["mlp_ratio"])
    if not isinstance(ratio, (int, float)) or abs(float(ratio) - shapes["mlp_ratio"]) > 1e-6:
        differ.append(f"mlp_ratio={ratio!r} (its tensors: {shapes['mlp_ratio']})")
    heads = config.get("num_heads", 1)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or shapes["embed_dim"] % heads:
        differ.append(f"num_heads={heads!r} (does not divide the width {shapes['embed_dim']})")
    elif "num_heads" not in guessed and heads != shapes["num_heads"]:
        differ.append(f"num_heads={heads!r} (its attention gate: {shapes['num_heads']})")
    eps = config.get("norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        differ.append(f"norm_eps={eps!r} (a LayerNorm epsilon is in (0, 1))")
    if differ:
        raise CheckpointError(
            f"{origin}: its semmae record does not describe its weights ({'; '.join(differ[:3])}): "
            "the file is damaged or was altered"
        )


def weights_from_checkpoint(ckpt: Any, origin: str) -> EncoderWeights:
    """A loaded checkpoint (any of the file sources) -> EncoderWeights."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{origin} holds a {type(ckpt).__name__}, not a checkpoint dict")
    meta = ckpt.get("semmae")
    if isinstance(meta, dict):
        kind = meta.get("kind", "pretrain")
        state = ckpt.get("model") if kind == "encoder" else ckpt.get("state_dict")
        prefix = meta.get("encoder_prefix", LEGACY_PREFIXES.get(kind, "encoder."))
        if not isinstance(state, dict):
            raise CheckpointError(f"{origin} is a semmae {kind} checkpoint without weights")
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{origin} holds no encoder weights (no '{prefix}*' keys)")
        model = meta.get("model") or {}
        config = {k: model[k] for k in (*ENCODER_KEYS, *FOREIGN_KEYS) if k in model}
        config.update({k: v for k, v in (meta.get("head") or {}).items() if k in HEAD_KEYS})
        layout = block_layout(state)  # the weights decide (older records lack these keys)
        layout.pop("num_heads", None)
        if not layout["init_values"]:
            layout.pop("init_values")
        config.update(layout)
        check_record(config, state, origin)
        return EncoderWeights(config, state, kind, origin)
    if isinstance(ckpt.get("model"), dict):
        kind, state = "mae", ckpt["model"]
    elif isinstance(ckpt.get("state_dict"), dict):
        kind, state = "state_dict", ckpt["state_dict"]
    else:
        kind, state = "state_dict", ckpt
    if not any(str(k).endswith(ANCHOR) for k in state):
        raise CheckpointError(
            f"{origin} is not an encoder checkpoint: expected a semmae checkpoint, an exported encoder, an official "
            f"MAE .pth (weights under 'model') or a ViT state dict; "
            f"its top-level keys: {', '.join(map(str, list(ckpt)[:8]))}"
        )
    state = strip_to_encoder(state, origin)
    config, guessed = infer_geometry(state, origin)
    return EncoderWeights(config, state, kind, origin, guessed)


def timm_architecture(name: str) -> dict[str, Any]:
    """Geometry of a timm ViT by model name (built on the meta device: no weights, no download), checked to be
    the kind of ViT that ViTEncoder is: a CLS token, optional registers, position entries for every token or for the
    patches only (no_embed_class), pre-norm blocks with optional LayerScale, exact GELU. A model that resamples its
    position embedding for every input size (dynamic_img_size) is built at one size instead: the embedding is resampled
    once, when the weights are loaded, with timm's own function."""
    import timm
    from timm.models.vision_transformer import Block, VisionTransformer

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as exc:  # unknown name, bad tag
        raise CheckpointError(
            f"timm cannot build {name!r} ({exc}); list the names with timm.list_models('vit_*')"
        ) from exc
    problems = []
    if not isinstance(model, VisionTransformer):
        problems.append(f"it is a {type(model).__name__}, not a VisionTransformer")
    else:
        blk = model.blocks[0]
        if not model.has_class_token or model.pos_embed is None:
            problems.append(
                "its tokens differ (semmae's encoder has one CLS token, any registers after it, and a "
                "learned or fixed position embedding)"
            )
        if (
            type(blk) is not Block
            or type(blk.attn).__name__ != "Attention"
            or not isinstance(blk.attn.q_norm, nn.Identity)
        ):
            problems.append("its blocks differ (qk-norm, another attention or another block type)")
        if (
            not isinstance(model.norm_pre, nn.Identity)
            or type(blk.mlp.act) is not nn.GELU
            or blk.mlp.act.approximate != "none"
        ):
            problems.append("it has a pre-norm or another activation")
    if problems:
        raise CheckpointError(f"timm model {name} cannot be loaded into semmae's ViT encoder: {'; '.join(problems)}")
    blk = model.blocks[0]
    config = dict(
        img_size=int(model.patch_embed.img_size[0]),
        patch_size=int(model.patch_embed.patch_size[0]),
        in_chans=int(model.patch_embed.proj.in_channels),
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=int(blk.attn.num_heads),
        mlp_ratio=blk.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=blk.attn.qkv.bias is not None,
        reg_tokens=int(model.num_reg_tokens),
        norm_eps=float(blk.norm1.eps),
    )
    if not isinstance(blk.ls1, nn.Identity):
        config["init_values"] = LAYER_SCALE_INIT
    if model.no_embed_class:
        config["no_embed_class"] = True
    return config


def read_weights(source: str, weights_file: str | Path | None = None, trust: bool = False) -> EncoderWeights:
    """A resolved source (a file path, timm:NAME or hf:DIR) -> EncoderWeights."""
    if source.startswith(hf_format.HF_PREFIX):
        if weights_file is not None:
            raise CheckpointError(
                f"ckpt_file={weights_file} is only used with ckpt=timm:MODEL_NAME (got "
                f"ckpt={source}: a Hugging Face directory holds its own weights)"
            )
        config, state, origin = hf_format.read_hf(source, trust=trust)
        return EncoderWeights(config, state, "hf", origin)
    if source.startswith("timm:"):
        name = source[len("timm:") :]
        if weights_file is None:
            raise CheckpointError(
                f"ckpt=timm:{name} needs its weights as a local file: ckpt_file=PATH (for example the "
                f"model.safetensors of the Hugging Face repository timm/{name}); semmae does not download weights"
            )
        config = timm_architecture(name)
        origin = f"timm:{name} ({weights_file})"
        ckpt = read_checkpoint(weights_file, trust=trust)
        if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
            ckpt = ckpt["model"]
        elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
            ckpt = ckpt["state_dict"]
        return EncoderWeights(config, strip_to_encoder(ckpt, origin), "timm", origin)
    if weights_file is not None:
        raise CheckpointError(f"ckpt_file={weights_file} is only used with ckpt=timm:MODEL_NAME (got ckpt={source})")
    return weights_from_checkpoint(read_checkpoint(source, trust=trust), source)
