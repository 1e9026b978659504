"""One path for loading encoder weights, whatever their source, into a ViTEncoder (timm parameter names):

  source                                   what it holds
  semmae pretraining checkpoint (.ckpt)    ckpt["semmae"] (kind "pretrain", geometry), weights under mae.encoder.*
  semmae fine-tune / linprobe (.ckpt)      kind "finetune" / "linprobe", weights under encoder.*
  semmae segmentation (.ckpt)              kind "segment", weights under segmenter.encoder.*
                                           (every task records its encoder's key prefix: one rule reads them all)
  exported encoder (semmae-export)         {"model": timm state dict, "semmae": {"kind": "encoder", geometry}}
                                           (.pth; or .safetensors with the same record in the file's metadata)
  official MAE checkpoint (.pth)           {"model": MAE state dict, ...}; decoder_* and mask_token are dropped
  any ViT state dict                       timm / MAE names, under any prefix (module., encoder., ...)
  "timm:MODEL_NAME" + weights_file         a timm model name (its architecture) and a local weights file
  "latest"                                 the newest outputs/pretrain/*/checkpoints/last.ckpt (or multirun/)
                                           (semmae.models.sources: find_latest(root, pattern) for any glob)
  null, or "random"                        no weights: the encoder of a freshly initialised MAE (random_encoder)

Each source is read into EncoderWeights (geometry + state dict). One filter function (timm's habit) adapts the state
dict to the encoder being built: it drops decoder keys and other tasks' heads, resamples the position embedding when
the image size differs, and folds the patch projection when the number of input channels differs. Whatever still
does not fit (width, depth, missing or extra keys) is reported by name in a CheckpointError."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv
from torch import nn

from semmae.errors import CheckpointError, ConfigError
from semmae.models.encoder import ViTEncoder
from semmae.models.sources import SOURCES_HELP, find_latest, is_random, resolve_source  # noqa: F401 (re-exported)
from semmae.utils.atomic import atomic_write
from semmae.utils.safe_load import load_file

ENCODER_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "reg_tokens")
ARCH_KEYS = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "qkv_bias", "reg_tokens")  # fixed by the weights
HEAD_KEYS = ("num_classes", "global_pool", "fc_norm")
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # ViT-Ti/S/B/L/H, the widths MAE and timm publish
DROP_PREFIXES = ("decoder", "mask_token")  # MAE decoder_* / our decoder.*, and the mask token
NEW_HEAD_PREFIXES = ("head.", "fc_norm.")  # may be missing from a checkpoint: a new task head is initialised
# Where the encoder's weights sit in a task's state dict: every task records it (checkpoint["semmae"]
# ["encoder_prefix"]); files written before it did are read by their kind.
LEGACY_PREFIXES = {"encoder": "", "pretrain": "mae.encoder.", "segment": "segmenter.encoder."}
ANCHOR = "patch_embed.proj.weight"  # every ViT state dict has it; its prefix is the encoder's prefix


@dataclass
class EncoderWeights:
    config: dict[str, Any]  # ViTEncoder arguments the source fixes: geometry (and head layout, for fine-tuned models)
    state: dict[str, torch.Tensor]
    kind: str  # pretrain | finetune | linprobe | encoder | mae | state_dict | timm
    origin: str  # for messages: the path, or timm:NAME (file)
    guessed: tuple[str, ...] = field(default=())  # config keys inferred, not recorded (an override may set them)


# --- reading files ----------------------------------------------------------------------------------------------
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


# --- sources -> EncoderWeights -------------------------------------------------------------------------------------
def strip_to_encoder(state: Mapping[str, Any], origin: str) -> dict[str, torch.Tensor]:
    """Keep the keys under the prefix of the patch projection (module., encoder., model., ...), prefix removed."""
    anchors = [k for k in state if k.endswith(ANCHOR)]
    if not anchors:
        sample = ", ".join(list(state)[:6])
        raise CheckpointError(f"{origin} holds no ViT encoder weights (no '{ANCHOR}'); its keys start: {sample}")
    prefix = min(anchors, key=len)[: -len(ANCHOR)]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and torch.is_tensor(v)}


def num_registers(state: Mapping[str, torch.Tensor]) -> int:
    """Register tokens of a ViT state dict: timm's reg_token [1, R, D] (absent without registers)."""
    reg = state.get("reg_token")
    return int(reg.shape[1]) if reg is not None and reg.ndim == 3 else 0


def infer_geometry(state: Mapping[str, torch.Tensor], origin: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Geometry of a ViT state dict from its shapes. The number of heads is not in the shapes: it is taken from the
    standard widths (ViT-Ti/S/B/L/H) and reported as guessed; other widths need it passed in. Registers: R from
    reg_token's shape; timm's pos_embed (no_embed_class=False) then holds 1 + R prefix entries before the grid."""
    w = state[ANCHOR]
    if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise CheckpointError(f"{origin}: {ANCHOR} has shape {list(w.shape)}, expected [width, channels, p, p]")
    embed_dim, in_chans, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[-1])
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    pos = state.get("pos_embed")
    if not blocks or pos is None:
        raise CheckpointError(f"{origin}: a ViT state dict needs blocks.N.* and pos_embed keys")
    regs = num_registers(state)
    prefix = 1 + regs
    grid = math.isqrt(max(pos.shape[1] - prefix, 0))
    if grid < 1 or grid * grid != pos.shape[1] - prefix:
        what = "a CLS entry" + (f" + {regs} register entries" if regs else "")
        raise CheckpointError(f"{origin}: pos_embed has {pos.shape[1]} entries, not {what} + a square grid "
                              "(encoders without a class token, or without position entries for their prefix "
                              "tokens, are not supported)")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    config = dict(
        img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=embed_dim, depth=max(blocks) + 1,
        mlp_ratio=fc1.shape[0] / embed_dim if fc1 is not None else 4.0,
        qkv_bias="blocks.0.attn.qkv.bias" in state, reg_tokens=regs,
    )
    if embed_dim in HEADS_BY_WIDTH:
        config["num_heads"] = HEADS_BY_WIDTH[embed_dim]
    return config, ("num_heads",)


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
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{origin} holds no encoder weights (no '{prefix}*' keys)")
        model = meta.get("model") or {}
        config = {k: model[k] for k in (*ENCODER_KEYS, "qkv_bias") if k in model}
        config.update({k: v for k, v in (meta.get("head") or {}).items() if k in HEAD_KEYS})
        config["reg_tokens"] = num_registers(state)  # the weights decide (records before registers lack the key)
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
            f"MAE .pth (weights under 'model') or a ViT state dict; its top-level keys: {', '.join(map(str, list(ckpt)[:8]))}"
        )
    state = strip_to_encoder(state, origin)
    config, guessed = infer_geometry(state, origin)
    return EncoderWeights(config, state, kind, origin, guessed)


def load_encoder_state(ckpt: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """-> (encoder config, encoder state dict in timm names) from a loaded checkpoint of any file source."""
    weights = weights_from_checkpoint(ckpt, source)
    return weights.config, weights.state


def timm_architecture(name: str) -> dict[str, Any]:
    """Geometry of a timm ViT by model name (built on the meta device: no weights, no download), checked to be
    the kind of ViT that ViTEncoder is."""
    import timm
    from timm.models.vision_transformer import Block, VisionTransformer

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as exc:  # unknown name, bad tag
        raise CheckpointError(f"timm cannot build {name!r} ({exc}); list the names with timm.list_models('vit_*')") from exc
    problems = []
    if not isinstance(model, VisionTransformer):
        problems.append(f"it is a {type(model).__name__}, not a VisionTransformer")
    else:
        blk = model.blocks[0]
        if not model.has_class_token or model.no_embed_class:
            problems.append("its tokens differ (semmae's encoder has one CLS token, and any registers after it, "
                            "each with a position entry: timm's no_embed_class=False)")
        if type(blk) is not Block or not isinstance(blk.ls1, nn.Identity) or not isinstance(blk.attn.q_norm, nn.Identity):
            problems.append("its blocks differ (layer scale, qk-norm or another block type)")
        if not isinstance(model.norm_pre, nn.Identity) or type(blk.mlp.act) is not nn.GELU or blk.mlp.act.approximate != "none":
            problems.append("it has a pre-norm or another activation")
    if problems:
        raise CheckpointError(f"timm model {name} cannot be loaded into semmae's ViT encoder: {'; '.join(problems)}")
    blk = model.blocks[0]
    return dict(
        img_size=int(model.patch_embed.img_size[0]), patch_size=int(model.patch_embed.patch_size[0]),
        in_chans=int(model.patch_embed.proj.in_channels), embed_dim=int(model.embed_dim), depth=len(model.blocks),
        num_heads=int(blk.attn.num_heads), mlp_ratio=blk.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=blk.attn.qkv.bias is not None, reg_tokens=int(model.num_reg_tokens),
    )


def read_weights(source: str, weights_file: str | Path | None = None, trust: bool = False) -> EncoderWeights:
    """A resolved source (a file path or timm:NAME) -> EncoderWeights."""
    if source.startswith("timm:"):
        name = source[len("timm:"):]
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


# --- the one filter and the load ----------------------------------------------------------------------------------
def filter_state(state: Mapping[str, torch.Tensor], encoder: ViTEncoder) -> dict[str, torch.Tensor]:
    """Adapt an encoder state dict (timm names) to `encoder`: drop decoder keys and the mask token; drop the final
    norm when the encoder pools with fc_norm instead (MAE fine-tuning); drop a head or fc_norm the encoder does not
    have in that shape (another task's classifier); resample the position embedding to the encoder's grid;
    fold the patch projection to the encoder's input channels (exact for grey images replicated to RGB)."""
    target = encoder.state_dict()
    out = {}
    for key, value in state.items():
        if key.startswith(DROP_PREFIXES):
            continue
        if key.startswith("norm.") and key not in target:
            continue
        if key.startswith(NEW_HEAD_PREFIXES) and (key not in target or target[key].shape != value.shape):
            continue
        want = target.get(key)
        prefix = encoder.num_prefix_tokens
        old = math.isqrt(max(value.shape[1] - prefix, 0)) if key == "pos_embed" and value.ndim == 3 else 0
        if (key == "pos_embed" and want is not None and value.shape != want.shape and value.shape[-1] == want.shape[-1]
                and old >= 1 and old * old == value.shape[1] - prefix):  # else: other registers, reported below
            value = resample_abs_pos_embed(value.float(), new_size=list(encoder.grid_size), old_size=[old, old],
                                           num_prefix_tokens=prefix).to(value.dtype)
        if (key == ANCHOR and want is not None and value.shape[1] != want.shape[1]
                and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]):
            value = adapt_input_conv(want.shape[1], value)
        out[key] = value
    return out


def load_state(encoder: ViTEncoder, state: Mapping[str, torch.Tensor], origin: str) -> ViTEncoder:
    """filter_state, then load; every key that does not fit is named. head.* / fc_norm.* may be missing (new head)."""
    state = filter_state(state, encoder)
    target = encoder.state_dict()
    missing = [k for k in target if k not in state and not k.startswith(NEW_HEAD_PREFIXES)]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {list(state[k].shape)} vs {list(target[k].shape)}"
              for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("shape mismatch (checkpoint vs encoder)", shapes), ("missing", missing),
                             ("unexpected", unexpected)):
            if items:
                more = f" and {len(items) - 4} more" if len(items) > 4 else ""
                parts.append(f"{label}: {', '.join(items[:4])}{more}")
        raise CheckpointError(f"{origin} does not fit the encoder ({describe(encoder)}): {'; '.join(parts)}")
    encoder.load_state_dict(state, strict=False)
    return encoder


def describe(encoder: ViTEncoder) -> str:
    c = encoder.config
    regs = f", {c['reg_tokens']} registers" if c.get("reg_tokens") else ""
    return (f"width {c['embed_dim']}, depth {c['depth']}, {c['num_heads']} heads, patch {c['patch_size']}, "
            f"{c['img_size']} px, {c['in_chans']} channels{regs}")


def check_overrides(weights: EncoderWeights, overrides: Mapping[str, Any]) -> None:
    for key in ARCH_KEYS:
        if key in overrides and key in weights.config and key not in weights.guessed:
            if overrides[key] != weights.config[key]:
                raise CheckpointError(f"{weights.origin} holds an encoder with {key}={weights.config[key]}, "
                                      f"not {overrides[key]}: drop that setting, or use a matching checkpoint")
    if "num_heads" not in weights.config and "num_heads" not in overrides:
        raise CheckpointError(
            f"{weights.origin}: the number of attention heads of a width-{weights.config['embed_dim']} encoder is not "
            "in its weights; choose the backbone=... of that width, or pass +model.encoder.num_heads=N"
        )


def load_encoder(source: str | Path, weights_file: str | Path | None = None, root: str | Path = ".",
                 trust: bool = False, backbone: Mapping[str, Any] | None = None, **overrides: Any) -> ViTEncoder:
    """Build a ViTEncoder with the source's geometry and load its weights. overrides go to ViTEncoder: e.g.
    img_size (the position embedding is resampled), in_chans (the patch projection is folded), drop_path_rate,
    global_pool, fc_norm, num_classes, fused_attn. source: see the module docstring; root anchors 'latest'; trust
    unpickles the file in full (the user's explicit trust_checkpoint=true), else only tensors and plain values.
    backbone (the task's backbone group) supplies the number of heads, which the weights do not record, when its
    width is the checkpoint's."""
    resolved = resolve_source(source, root)
    if resolved is None:
        raise CheckpointError(f"load_encoder needs a source; {SOURCES_HELP}")
    weights = read_weights(resolved, weights_file, trust=trust)
    if ("num_heads" in weights.guessed and "num_heads" not in overrides and backbone is not None
            and backbone.get("num_heads") and backbone.get("embed_dim") == weights.config["embed_dim"]):
        overrides = {**overrides, "num_heads": int(backbone["num_heads"])}
    check_overrides(weights, overrides)
    encoder = ViTEncoder(**{**weights.config, **overrides})
    return load_state(encoder, weights.state, weights.origin)


def random_encoder(backbone: Mapping[str, Any], seed: int | None = None, **overrides: Any) -> ViTEncoder:
    """A randomly initialised encoder with the backbone's geometry, initialised as MAE pretraining starts (the
    encoder of a fresh MaskedAutoencoder, copied through the same load path). seed: torch.manual_seed(seed) first
    (semmae-analyze); None draws from the global generator as the task has seeded it (linprobe, finetune, segment)."""
    from semmae.models.mae import MaskedAutoencoder

    if seed is not None:
        torch.manual_seed(int(seed))
    geometry = {k: backbone[k] for k in ENCODER_KEYS if k in backbone}
    geometry.update({k: overrides[k] for k in ("img_size", "in_chans") if k in overrides})
    decoder = {k: backbone[k] for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads") if k in backbone}
    fresh = MaskedAutoencoder(**geometry, **decoder).encoder
    encoder = ViTEncoder(**{**geometry, **overrides})
    return load_state(encoder, fresh.state_dict(), "random initialisation")


def build_encoder(source: str | None, weights_file: str | None = None, backbone: Mapping[str, Any] | None = None,
                  root: str = ".", trust: bool = False, seed: int | None = None, **overrides: Any) -> ViTEncoder:
    """The encoder a task config asks for (conf/encoder/checkpoint.yaml): ckpt=null or random ->
    random_encoder(backbone, seed), else load_encoder(source). encoder.source names where its weights came from
    (the resolved path, timm:NAME, or None for random init)."""
    if is_random(source):
        if backbone is None:
            raise ConfigError("ckpt=null builds a randomly initialised encoder, which needs the backbone config")
        if weights_file is not None:
            raise ConfigError("ckpt_file is set but ckpt=null: pass ckpt=timm:MODEL_NAME with it")
        encoder = random_encoder(backbone, seed=seed, **overrides)
        encoder.source = None
        return encoder
    resolved = resolve_source(source, root)
    encoder = load_encoder(resolved, weights_file=weights_file, root=root, trust=trust, backbone=backbone, **overrides)
    encoder.source = resolved
    if backbone is not None:
        differ = [f"{k} {backbone[k]} vs {encoder.config[k]}" for k in ("embed_dim", "depth", "patch_size")
                  if k in backbone and backbone[k] != encoder.config[k]]
        if differ:
            warnings.warn(f"the backbone config differs from the checkpoint's encoder ({', '.join(differ)}): the "
                          f"checkpoint's geometry is used, at backbone.img_size={encoder.config['img_size']}; choose "
                          "the matching backbone=... to silence this", stacklevel=2)
    return encoder


# --- export ---------------------------------------------------------------------------------------------------------
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
