"""Capturing what every encoder block does in one forward pass: its attention probabilities [B, H, T, T] and its
output tokens [B, T, D]; on request also what the head and CLS diagnostics need (each head's value vectors and
output projection, a gate per query, the attention branch and the residual stream it is added to), and the MLP
hidden activations, handed to a callback block by block instead of being kept.

Training keeps timm's fused attention (SDPA), which never materialises the probabilities. Only the analysed
batch takes the explicit path: inside `attention_capture` every block's `attn.fused_attn` is switched off, so
timm computes softmax(q k^T * scale) itself, and a forward hook on `attn.attn_drop` (the identity in eval mode)
reads the probabilities as they leave it. On exit the flags, the hooks and every module's train/eval state are
restored exactly as they were; nothing random is drawn (eval mode: no dropout, no drop-path).

The view is the full image (`forward_features`, the fine-tuning view) or, given kept patch ids, the pretraining
view: the encoder on the visible patches only (`forward_visible`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from semmae.errors import ConfigError

MlpHook = Callable[[int, torch.Tensor], None]  # (0-based block index, hidden activations [B, T, hidden])


@dataclass
class Capture:
    """What one forward pass left behind; lists are indexed by block (0-based; block 1 is attn[0])."""

    attn: list[torch.Tensor]  # [B, H, T, T] attention probabilities, rows sum to 1
    tokens: list[torch.Tensor]  # [B, T, D] block outputs (the residual stream, before the final norm)
    output: torch.Tensor  # forward_features(images): [B, T, D] after the final norm
    num_prefix_tokens: int  # CLS (and registers) first, then the patch tokens in row-major order
    num_reg_tokens: int = 0  # registers among the prefix tokens (tokens 1..num_reg_tokens; timm's reg_token)
    # with values=True:
    values: list[torch.Tensor] | None = field(default=None, repr=False)  # [B, H, T, dh] each head's v_j
    head_out: list[torch.Tensor] | None = field(default=None, repr=False)  # [H, D, dh]: u_j = head_out[h] @ v_j
    gates: list[torch.Tensor | None] | None = field(default=None, repr=False)  # [B, H, T, 1 or dh]; None: no gate
    # with residual=True:
    branch: list[torch.Tensor] | None = field(default=None, repr=False)  # [B, T, D] attention branch, as added
    residual: list[torch.Tensor] | None = field(default=None, repr=False)  # [B, T, D] the block's input
    ids_keep: torch.Tensor | None = field(default=None, repr=False)  # [B, K] kept patches (pretraining view)

    @property
    def patch_slice(self) -> slice:
        """The patch tokens of a token axis: CLS and registers excluded."""
        return slice(self.num_prefix_tokens, None)

    @property
    def depth(self) -> int:
        return len(self.attn)

    def head_values(self, block: int) -> torch.Tensor:
        """u [B, H, T, D] of block (0-based): each head's value vectors after its slice of the output projection
        (and LayerScale), u_j^h = W_o[:, h-slice] v_j^h; the projection's bias is left out."""
        if self.values is None or self.head_out is None:
            raise ConfigError("the capture holds no value vectors: capture(..., values=True)")
        return torch.einsum("bhtk,hdk->bhtd", self.values[block], self.head_out[block])


def is_vit(module: nn.Module) -> bool:
    """A timm-style ViT: patch embedding, blocks with attention, forward_features."""
    return (
        isinstance(module, nn.Module)
        and hasattr(module, "blocks")
        and hasattr(module, "patch_embed")
        and callable(getattr(module, "forward_features", None))
    )


def find_encoder(module: nn.Module) -> nn.Module:
    """The ViT encoder inside a task's LightningModule, by this rule (tasks written later should follow it):

    1. the module itself, if it is a ViT;
    2. else its `encoder` attribute;
    3. else `mae.encoder` (the pretraining task);
    4. else the first ViT among its submodules, in `named_modules()` order.
    A ViT here is any timm `VisionTransformer` (semmae's `ViTEncoder` included): it has `patch_embed`, `blocks`
    and `forward_features`."""
    if is_vit(module):
        return module
    for path in ("encoder", "mae.encoder"):
        obj = module
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if obj is not None and is_vit(obj):
            return obj
    for _, sub in module.named_modules():
        if is_vit(sub):
            return sub
    raise ConfigError(
        f"no ViT encoder found in {type(module).__name__}: attention maps need an `encoder` attribute, "
        "`mae.encoder`, or a timm VisionTransformer submodule"
    )


def _check_blocks(encoder: nn.Module) -> list[nn.Module]:
    blocks = list(encoder.blocks)
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        if (
            attn is None
            or not hasattr(attn, "fused_attn")
            or not isinstance(getattr(attn, "attn_drop", None), nn.Module)
        ):
            raise ConfigError(
                f"block {i + 1} of {type(encoder).__name__} has no timm Attention "
                "(attn.fused_attn and attn.attn_drop): "
                "attention capture supports timm ViT blocks only"
            )
    return blocks


def _check_values(blocks: list[nn.Module]) -> None:
    for i, blk in enumerate(blocks):
        attn = blk.attn
        linear = [isinstance(getattr(attn, name, None), nn.Linear) for name in ("qkv", "proj")]
        if not all(linear):
            raise ConfigError(
                f"block {i + 1}: the head diagnostics need a fused qkv projection and attn.proj (timm's Attention)"
            )
        if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
            raise ConfigError(
                f"block {i + 1} normalises the heads' joint output before attn.proj (scale_norm): a "
                "head's update is then not linear in its values, so the head diagnostics do not apply"
            )


def head_projection(block: nn.Module) -> torch.Tensor:
    """[H, D, dh]: the output projection's columns of each head, scaled by the block's LayerScale (ls1.gamma) when
    it has one, so that head_projection[h] @ v_j^h is what head h writes to the residual stream for key j."""
    attn = block.attn
    heads, head_dim = int(attn.num_heads), attn.proj.weight.shape[1] // int(attn.num_heads)
    w = attn.proj.weight.detach().float().reshape(-1, heads, head_dim).permute(1, 0, 2)
    gamma = getattr(getattr(block, "ls1", None), "gamma", None)
    return w * gamma.detach().float()[None, :, None] if gamma is not None else w


def gate_values(attn: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """The output of a gated attention's `attn.gate` -> [B, H, T, 1 or dh], the factor on each head's output per
    query (per head: [B, T, H]; per channel: [B, T, H * dh]). timm's `gated=True` gate is a linear layer whose logits
    the attention passes through a sigmoid; semmae's GatedAttention gate (HeadGate) returns the factor itself; another
    gate says how with `attn.gate_activation` (its output -> the factor)."""
    act = getattr(attn, "gate_activation", None)
    if callable(act):
        g = act(out)
    elif isinstance(attn.gate, nn.Linear):
        g = out.sigmoid()
    else:
        g = out
    b, t, width = g.shape
    heads = int(attn.num_heads)
    if width == heads:
        return g.permute(0, 2, 1).unsqueeze(-1)
    return g.reshape(b, t, heads, width // heads).permute(0, 2, 1, 3)


@dataclass
class _Store:
    attn: list
    tokens: list
    values: list | None = None
    gates: list | None = None
    branch: list | None = None
    residual: list | None = None


@contextmanager
def attention_capture(
    encoder: nn.Module, values: bool = False, residual: bool = False, mlp_hook: MlpHook | None = None
) -> Iterator[_Store]:
    """Within the block, forward passes of `encoder` fill the store (one slot per block, from the latest pass):
    attention probabilities and block outputs; with values, each head's v [B, H, T, dh] (from the qkv output)
    and the gate per query when the attention has one (`attn.gate`); with residual, the attention branch as added
    to the residual stream (the output of `ls1`) and the block's input. mlp_hook(block, hidden) is called with
    the MLP hidden activations (the output of `mlp.act`) of every block, which are not kept. The encoder is in
    eval mode and on the explicit attention path."""
    blocks = _check_blocks(encoder)
    if values:
        _check_values(blocks)
    if mlp_hook is not None and any(
        not isinstance(getattr(getattr(b, "mlp", None), "act", None), nn.Module) for b in blocks
    ):
        raise ConfigError("the register-neuron search needs timm MLP blocks (mlp.act): this encoder has none")
    fused = [blk.attn.fused_attn for blk in blocks]
    training = [(m, m.training) for m in encoder.modules()]
    n = len(blocks)
    store = _Store(attn=[None] * n, tokens=[None] * n)
    if values:
        store.values, store.gates = [None] * n, [None] * n
    if residual:
        store.branch, store.residual = [None] * n, [None] * n
    handles = []

    def keep(slot: list, i: int, fn: Callable = lambda out: out):
        def hook(_module, _inputs, output):
            slot[i] = fn(output).detach()

        return hook

    def keep_input(slot: list, i: int):
        def hook(_module, inputs):
            slot[i] = inputs[0].detach()

        return hook

    def split_values(attn: nn.Module):
        heads = int(attn.num_heads)

        def fn(qkv: torch.Tensor) -> torch.Tensor:
            b, t, width = qkv.shape
            return qkv.reshape(b, t, 3, heads, width // (3 * heads))[:, :, 2].permute(0, 2, 1, 3)

        return fn

    def call_mlp(i: int):
        def hook(_module, _inputs, output):
            mlp_hook(i, output.detach())

        return hook

    try:
        encoder.eval()
        for i, blk in enumerate(blocks):
            blk.attn.fused_attn = False
            handles.append(blk.attn.attn_drop.register_forward_hook(keep(store.attn, i)))
            handles.append(blk.register_forward_hook(keep(store.tokens, i)))
            if values:
                handles.append(blk.attn.qkv.register_forward_hook(keep(store.values, i, split_values(blk.attn))))
                gate = getattr(blk.attn, "gate", None)
                if isinstance(gate, nn.Module):
                    handles.append(
                        gate.register_forward_hook(keep(store.gates, i, lambda out, a=blk.attn: gate_values(a, out)))
                    )
            if residual:
                handles.append(blk.register_forward_pre_hook(keep_input(store.residual, i)))
                handles.append(blk.ls1.register_forward_hook(keep(store.branch, i)))
            if mlp_hook is not None:
                handles.append(blk.mlp.act.register_forward_hook(call_mlp(i)))
        yield store
    finally:
        for h in handles:
            h.remove()
        for blk, flag in zip(blocks, fused, strict=True):
            blk.attn.fused_attn = flag
        for m, flag in training:
            m.training = flag


def visible_forward(encoder: nn.Module, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """The pretraining view: the encoder on the kept patches [B, K] only, prefix tokens first. semmae's encoder
    has it (`forward_visible`, as pretraining runs it); any other timm ViT runs timm_visible_forward."""
    if callable(getattr(encoder, "forward_visible", None)):
        return encoder.forward_visible(images, ids_keep)
    return timm_visible_forward(encoder, images, ids_keep)


def timm_visible_forward(encoder: nn.Module, images: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """The pretraining view through timm's own steps: patch embedding and position embedding (`_pos_embed`), the
    kept patch tokens gathered after the prefix, norm_pre, the blocks, the final norm."""
    tokens = encoder._pos_embed(encoder.patch_embed(images))
    npt = int(encoder.num_prefix_tokens)
    kept = torch.gather(tokens[:, npt:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return encoder.norm(encoder.blocks(encoder.norm_pre(torch.cat([tokens[:, :npt], kept], dim=1))))


def capture(
    encoder: nn.Module,
    images: torch.Tensor,
    ids_keep: torch.Tensor | None = None,
    values: bool = False,
    residual: bool = False,
    mlp_hook: MlpHook | None = None,
) -> Capture:
    """Run the encoder on images [B, C, H, W] (full view; or, with ids_keep [B, K], the pretraining view on the
    kept patches) and return every block's attention and output, plus what `values` and `residual` ask for (see
    attention_capture). The token axis is [CLS, registers, patches]: metrics over patches start at
    num_prefix_tokens."""
    with torch.no_grad(), attention_capture(encoder, values, residual, mlp_hook) as store:
        output = encoder.forward_features(images) if ids_keep is None else visible_forward(encoder, images, ids_keep)
    missing = [i + 1 for i, a in enumerate(store.attn) if a is None]
    if missing:
        raise ConfigError(f"blocks {missing} of {type(encoder).__name__} did not run their attention during capture")
    blocks = list(encoder.blocks)
    return Capture(
        attn=[a.float() for a in store.attn],
        tokens=[t.float() for t in store.tokens],
        output=output,
        num_prefix_tokens=int(getattr(encoder, "num_prefix_tokens", 1)),
        num_reg_tokens=int(getattr(encoder, "num_reg_tokens", 0)),
        values=[v.float().contiguous() for v in store.values] if values else None,
        head_out=[head_projection(blk) for blk in blocks] if values else None,
        gates=[g.float() if g is not None else None for g in store.gates] if values else None,
        branch=[b.float() for b in store.branch] if residual else None,
        residual=[r.float() for r in store.residual] if residual else None,
        ids_keep=ids_keep,
    )
