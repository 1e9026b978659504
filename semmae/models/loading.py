"""Building a ViTEncoder from EncoderWeights (semmae.models.weights), the second half of the one loading path. One
filter function (timm's habit) adapts the state dict to the encoder being built: it drops decoder keys and other
tasks' heads, resamples the position embedding when the image size differs, and folds the patch projection when the
number of input channels differs. Whatever still does not fit (width, depth, missing or extra keys) is reported by
name in a CheckpointError. build_encoder is what a task config's encoder node calls: a source, or a randomly
initialised encoder for ckpt=null."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from semmae.errors import CheckpointError, ConfigError
from semmae.models.encoder import ViTEncoder
from semmae.models.sources import SOURCES_HELP, is_random, resolve_source
from semmae.models.weights import ANCHOR, ENCODER_KEYS, EncoderWeights, read_weights

ARCH_KEYS = (
    "embed_dim",
    "depth",
    "num_heads",
    "patch_size",
    "mlp_ratio",
    "qkv_bias",
    "reg_tokens",
    "attn_gate",
    "no_embed_class",
    "norm_eps",
)  # fixed by the weights (or by the config.json beside them)
DROP_PREFIXES = ("decoder", "mask_token")  # MAE decoder_* / our decoder.*, and the mask token
NEW_HEAD_PREFIXES = ("head.", "fc_norm.")  # may be missing from a checkpoint: a new task head is initialised


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
        prefix = encoder.num_pos_prefix
        old = math.isqrt(max(value.shape[1] - prefix, 0)) if key == "pos_embed" and value.ndim == 3 else 0
        if (
            key == "pos_embed"
            and want is not None
            and value.shape != want.shape
            and value.shape[-1] == want.shape[-1]
            and old >= 1
            and old * old == value.shape[1] - prefix
        ):  # else: other registers, reported below
            value = resample_abs_pos_embed(
                value.float(), new_size=list(encoder.grid_size), old_size=[old, old], num_prefix_tokens=prefix
            ).to(value.dtype)
        if (
            key == ANCHOR
            and want is not None
            and value.shape[1] != want.shape[1]
            and value.shape[0] == want.shape[0]
            and value.shape[2:] == want.shape[2:]
        ):
            value = adapt_input_conv(want.shape[1], value)
        out[key] = value
    return out


def load_state(encoder: ViTEncoder, state: Mapping[str, torch.Tensor], origin: str) -> ViTEncoder:
    """filter_state, then load; every key that does not fit is named, and so is a tensor that is not finite (the
    weights of a run that diverged cannot be evaluated). head.* / fc_norm.* may be missing (new head)."""
    state = filter_state(state, encoder)
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(
            f"{origin} holds weights that are not finite ({bad} has NaN or inf values): the "
            "checkpoint cannot be evaluated; take a checkpoint from before its run diverged"
        )
    target = encoder.state_dict()
    missing = [k for k in target if k not in state and not k.startswith(NEW_HEAD_PREFIXES)]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (
            ("shape mismatch (checkpoint vs encoder)", shapes),
            ("missing", missing),
            ("unexpected", unexpected),
        ):
            if items:
                more = f" and {len(items) - 4} more" if len(items) > 4 else ""
                parts.append(f"{label}: {', '.join(items[:4])}{more}")
        raise CheckpointError(f"{origin} does not fit the encoder ({describe(encoder)}): {'; '.join(parts)}")
    encoder.load_state_dict(state, strict=False)
    return encoder


def describe(encoder: ViTEncoder) -> str:
    c = encoder.config
    extras = [
        f"{c['reg_tokens']} registers" if c.get("reg_tokens") else "",
        "gated attention" if c.get("attn_gate") else "",
        "LayerScale" if c.get("init_values") else "",
    ]
    return (
        f"width {c['embed_dim']}, depth {c['depth']}, {c['num_heads']} heads, patch {c['patch_size']}, "
        f"{c['img_size']} px, {c['in_chans']} channels" + "".join(f", {e}" for e in extras if e)
    )


def check_overrides(weights: EncoderWeights, overrides: Mapping[str, Any]) -> None:
    for key in ARCH_KEYS:
        if key in overrides and key in weights.config and key not in weights.guessed:
            if overrides[key] != weights.config[key]:
                raise CheckpointError(
                    f"{weights.origin} holds an encoder with {key}={weights.config[key]}, "
                    f"not {overrides[key]}: drop that setting, or use a matching checkpoint"
                )
    if "num_heads" not in weights.config and "num_heads" not in overrides:
        raise CheckpointError(
            f"{weights.origin}: the number of attention heads of a width-{weights.config['embed_dim']} encoder is not "
            "in its weights; choose the backbone=... of that width, or pass +model.encoder.num_heads=N"
        )


def load_encoder(
    source: str | Path,
    weights_file: str | Path | None = None,
    root: str | Path = ".",
    trust: bool = False,
    backbone: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> ViTEncoder:
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
    if (
        "num_heads" in weights.guessed
        and "num_heads" not in overrides
        and backbone is not None
        and backbone.get("num_heads")
        and backbone.get("embed_dim") == weights.config["embed_dim"]
    ):
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


def build_encoder(
    source: str | None,
    weights_file: str | None = None,
    backbone: Mapping[str, Any] | None = None,
    root: str = ".",
    trust: bool = False,
    seed: int | None = None,
    **overrides: Any,
) -> ViTEncoder:
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
        differ = [
            f"{k} {backbone[k]} vs {encoder.config[k]}"
            for k in ("embed_dim", "depth", "patch_size")
            if k in backbone and backbone[k] != encoder.config[k]
        ]
        if differ:
            warnings.warn(
                f"the backbone config differs from the checkpoint's encoder ({', '.join(differ)}): the "
                f"checkpoint's geometry is used, at backbone.img_size={encoder.config['img_size']}; choose "
                "the matching backbone=... to silence this",
                stacklevel=2,
            )
    return encoder
