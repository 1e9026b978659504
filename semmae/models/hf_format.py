"""Hugging Face `transformers` ViT and ViTMAE checkpoints <-> semmae's encoder (timm parameter names).

A Hugging Face model directory holds config.json and its weights: model.safetensors, or pytorch_model.bin (read
weights-only), or shards listed in model.safetensors.index.json / pytorch_model.bin.index.json. Reading needs json
and safetensors only; transformers is never imported here.

Weight names, after an optional `vit.` prefix (ViTMAEForPreTraining, ViTForImageClassification):

  timm (semmae)                  transformers 4.x files                           transformers 5.x modules
  cls_token                      embeddings.cls_token
  pos_embed                      embeddings.position_embeddings (CLS row, then the patch grid; kept as stored)
  patch_embed.proj.*             embeddings.patch_embeddings.projection.*
  blocks.N.norm1.*               encoder.layer.N.layernorm_before.*               layers.N.layernorm_before.*
  blocks.N.attn.qkv.*            encoder.layer.N.attention.attention.{query,key,value}.*
                                                                                  layers.N.attention.{q,k,v}_proj.*
                                 (joined in the order q, k, v)
  blocks.N.attn.proj.*           encoder.layer.N.attention.output.dense.*         layers.N.attention.o_proj.*
  blocks.N.norm2.*               encoder.layer.N.layernorm_after.*                layers.N.layernorm_after.*
  blocks.N.mlp.fc1.*             encoder.layer.N.intermediate.dense.*             layers.N.mlp.fc1.*
  blocks.N.mlp.fc2.*             encoder.layer.N.output.dense.*                   layers.N.mlp.fc2.*
  norm.*                         layernorm.*
  head.*                         classifier.* (ViTForImageClassification: a linear head on the final CLS token)

Dropped: the MAE decoder (decoder.*), ViTModel's pooler (pooler.*, a tanh layer semmae's heads do not use) and the
mask token of masked-image-modelling ViTs. Any other name is kept as it is, so the loader names it.

The geometry comes from config.json, never guessed: hidden size, depth, heads, MLP width, image and patch size,
channels, qkv_bias, and layer_norm_eps (Hugging Face ViT configs say 1e-12 where MAE and timm use 1e-6: the value is
carried into the encoder's norm_eps). Only hidden_act "gelu" (exact GELU, as timm's) is read.

Export writes the inverse: config.json with ViTMAEConfig fields and model.safetensors in the 4.x names, the layout
that transformers' own save_pretrained writes and that both 4.x and 5.x from_pretrained load."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from semmae.errors import CheckpointError
from semmae.models.sources import HF_PREFIX

MODEL_TYPES = ("vit_mae", "vit")
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
DROPPED = ("decoder.", "pooler.", "embeddings.mask_token")

EMBEDDINGS = {  # timm name -> name in a Hugging Face file (no prefix)
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    "head.weight": "classifier.weight",
    "head.bias": "classifier.bias",
}
BLOCK_4X = {  # timm block part -> 4.x layer part (the layout written on export)
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
BLOCK_5X = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
QKV_4X = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
QKV_5X = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")


# --- reading ------------------------------------------------------------------------------------------------------
def hf_directory(source: str | Path) -> Path:
    """`hf:DIR` or DIR -> the directory path (not checked)."""
    text = str(source)
    return Path(text[len(HF_PREFIX) :] if text.startswith(HF_PREFIX) else text)


def read_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a Hugging Face ViT or ViTMAE directory; CheckpointError (one line) for anything else."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint not found: {directory} (ckpt=hf:DIR takes a Hugging Face model directory)")
    path = directory / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a Hugging Face model directory: it has no {CONFIG}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not a model configuration")
    kind = config.get("model_type")
    if kind not in MODEL_TYPES:
        raise CheckpointError(
            f"{directory} holds a Hugging Face {kind!r} model; semmae reads ViT and ViTMAE "
            f"encoders (model_type {' or '.join(map(repr, MODEL_TYPES))})"
        )
    return config


def square(config: Mapping[str, Any], key: str, origin: str) -> int:
    value = config.get(key)
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(
            f"{origin}: config.json {key}={value!r}; semmae's encoder takes one whole number "
            "(square images and patches)"
        )
    return value


def encoder_config(config: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """ViTEncoder arguments from a ViT / ViTMAE config.json: every value read, none guessed."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(
            f"{origin}: config.json hidden_act={act!r}; semmae's encoder computes exact GELU (hidden_act 'gelu') only"
        )
    ints = {}
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{origin}: config.json {key}={value!r}, expected a whole number >= 1")
        ints[key] = value
    eps = config.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise CheckpointError(f"{origin}: config.json layer_norm_eps={eps!r}, expected a number in (0, 1)")
    return dict(
        img_size=square(config, "image_size", origin),
        patch_size=square(config, "patch_size", origin),
        in_chans=int(config.get("num_channels", 3)),
        embed_dim=ints["hidden_size"],
        depth=ints["num_hidden_layers"],
        num_heads=ints["num_attention_heads"],
        mlp_ratio=ints["intermediate_size"] / ints["hidden_size"],
        qkv_bias=bool(config.get("qkv_bias", True)),
        norm_eps=float(eps),
    )


def read_tensors(directory: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """The weights of a Hugging Face directory (HF names): model.safetensors first, else pytorch_model.bin through
    semmae's safe loader (tensors only, unless the user trusts the file); sharded files through their index."""
    from semmae.utils.safe_load import load_file

    found = next((name for name in WEIGHT_FILES if (directory / name).is_file()), None)
    if found is None:
        raise CheckpointError(f"{directory} has a {CONFIG} but no weights ({', '.join(WEIGHT_FILES)})")
    if found.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads((directory / found).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"cannot read {directory / found}: {type(exc).__name__}: {exc}") from exc
    else:
        shards = [found]
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        path = directory / shard
        if shard.endswith(".safetensors"):
            state.update(read_safetensors(path))
        else:
            loaded = load_file(path, trust=trust)
            if not isinstance(loaded, dict):
                raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict")
            state.update({k: v for k, v in loaded.items() if torch.is_tensor(v)})
    return state


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    except Exception as exc:  # truncated file, not a safetensors file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def to_timm(state: Mapping[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Hugging Face ViT / ViTMAE weights (4.x or 5.x names, with or without `vit.`) -> timm names; q, k, v joined
    into qkv. Decoder, pooler and mask token dropped; unknown names kept for the loader to report."""
    plain = {(k[4:] if k.startswith("vit.") else k): v for k, v in state.items()}
    by_hf = {hf: timm for timm, hf in EMBEDDINGS.items()}
    parts = {hf: timm for table in (BLOCK_4X, BLOCK_5X) for timm, hf in table.items()}
    qkv_index = {hf: i for names in (QKV_4X, QKV_5X) for i, hf in enumerate(names)}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for key, value in plain.items():
        if key.startswith(DROPPED):
            continue
        if key in by_hf:
            out[by_hf[key]] = value
            continue
        layer = LAYER.match(key)
        if layer is None:
            out[key] = value
            continue
        n, part, kind = int(layer.group(1)), layer.group(2), layer.group(3)
        if part in qkv_index:
            qkv.setdefault((n, kind), {})[qkv_index[part]] = value
        elif part in parts:
            out[f"blocks.{n}.{parts[part]}.{kind}"] = value
        else:
            out[key] = value
    for (n, kind), pieces in sorted(qkv.items()):
        if len(pieces) != 3:
            have = ", ".join("qkv"[i] for i in sorted(pieces))
            raise CheckpointError(
                f"{origin}: layer {n} has the attention {kind} of {have} only, not of query, key and value"
            )
        shapes = {tuple(p.shape) for p in pieces.values()}
        if len(shapes) != 1:
            raise CheckpointError(
                f"{origin}: layer {n} has query, key and value {kind}s of different shapes {sorted(shapes)}"
            )
        out[f"blocks.{n}.attn.qkv.{kind}"] = torch.cat([pieces[0], pieces[1], pieces[2]], dim=0)
    return out


def check_position_entries(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], origin: str) -> None:
    """The stored position embedding must hold a CLS entry and the grid that config.json's sizes give."""
    pos = state.get("pos_embed")
    if pos is None:
        return  # the loader names the missing key
    grid = config["img_size"] // config["patch_size"]
    if pos.ndim != 3 or pos.shape[1] != 1 + grid * grid:
        stored = math.isqrt(max(int(pos.shape[1]) - 1, 0)) if pos.ndim == 3 else 0
        square_grid = pos.ndim == 3 and stored * stored == pos.shape[1] - 1
        what = f"{stored}x{stored} + 1" if square_grid else str(list(pos.shape))
        raise CheckpointError(
            f"{origin}: config.json says {config['img_size']} px images in {config['patch_size']} "
            f"px patches ({grid}x{grid} + 1 position entries) but position_embeddings holds {what}"
        )


def read_hf(source: str | Path, trust: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """`hf:DIR` or DIR -> (ViTEncoder arguments, state dict in timm names, origin for messages)."""
    directory = hf_directory(source)
    origin = f"{HF_PREFIX}{directory}"
    hf = read_config(directory)
    config = encoder_config(hf, origin)
    state = to_timm(read_tensors(directory, trust=trust), origin)
    check_position_entries(state, config, origin)
    if "head.weight" in state:
        config["num_classes"] = int(state["head.weight"].shape[0])
    return config, state, origin


# --- writing --------------------------------------------------------------------------------------------------------
def from_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names -> the 4.x Hugging Face names (no prefix, ViTMAEModel's): qkv split into query, key, value."""
    out = {}
    for key, value in state.items():
        if key in EMBEDDINGS:
            out[EMBEDDINGS[key]] = value
            continue
        n, _, rest = key.removeprefix("blocks.").partition(".")
        part, _, kind = rest.rpartition(".")
        if not key.startswith("blocks.") or not n.isdigit():
            raise CheckpointError(f"{key} has no Hugging Face ViTMAE counterpart")
        if part == "attn.qkv":
            for name, piece in zip(QKV_4X, value.chunk(3, dim=0), strict=True):
                out[f"encoder.layer.{n}.{name}.{kind}"] = piece.contiguous()
        elif part in BLOCK_4X:
            out[f"encoder.layer.{n}.{BLOCK_4X[part]}.{kind}"] = value
        else:
            raise CheckpointError(f"{key} has no Hugging Face ViTMAE counterpart")
    return out


def vitmae_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """ViTMAEConfig fields for an encoder config (ViTEncoder arguments); the decoder fields are ViTMAEConfig's
    defaults (ViTMAEModel does not read them)."""
    hidden = int(config["embed_dim"])
    return {
        "architectures": ["ViTMAEModel"],
        "model_type": "vit_mae",
        "hidden_size": hidden,
        "num_hidden_layers": int(config["depth"]),
        "num_attention_heads": int(config["num_heads"]),
        "intermediate_size": int(hidden * float(config.get("mlp_ratio", 4.0))),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": float(config.get("norm_eps", 1e-6)),
        "image_size": int(config["img_size"]),
        "patch_size": int(config["patch_size"]),
        "num_channels": int(config["in_chans"]),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "decoder_num_attention_heads": 16,
        "decoder_hidden_size": 512,
        "decoder_num_hidden_layers": 8,
        "decoder_intermediate_size": 2048,
        "mask_ratio": 0.75,
        "norm_pix_loss": False,
    }


def hf_files(config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, Callable[[Any], Any]]:
    """{file name: writer(binary file)} of the Hugging Face directory for an encoder (config, timm state dict)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in from_timm(state).items()}
    text = json.dumps(vitmae_config(config), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return {
        CONFIG: lambda fh: fh.write(text.encode("utf-8")),
        WEIGHTS: lambda fh: fh.write(save(tensors, metadata={"format": "pt"})),
    }
