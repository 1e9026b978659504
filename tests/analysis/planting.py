"""Real ViTEncoders (16 px, patch 4: 16 patches; width 32, 3 blocks, 4 heads) whose weights are set so that one
diagnostic has a known answer: a CLS sink of known mass in block 1 head 0, a patch token of known norm made by one
MLP neuron, a direction written only by the position embedding."""

from __future__ import annotations

import math

import torch

from semmae.models.encoder import ViTEncoder

SIZE, PATCH, WIDTH, DEPTH, HEADS = 16, 4, 32, 3, 4
GRID = SIZE // PATCH
P = GRID * GRID
HEAD_DIM = WIDTH // HEADS


def encoder(seed: int = 0, **kw) -> ViTEncoder:
    torch.manual_seed(seed)
    return ViTEncoder(
        img_size=SIZE, patch_size=PATCH, in_chans=1, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, **kw
    ).eval()


def images(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def plant_cls_sink(enc: ViTEncoder, mass: float, value: str = "nop") -> None:
    """Block 1, head 0: every query gives exactly `mass` to CLS and spreads the rest evenly over the other tokens.

    Dimensions 0 and 1 of every patch token are made equal (patch projection, position embedding and norm1 rows),
    so the key feature k = (x~_0 - x~_1) / f_cls of the normed input is 1 on CLS and 0 on every patch, whatever the
    image; the query is a constant beta / scale on it, so the logits are beta on CLS and 0 elsewhere, and
    A[i, CLS] = e^beta / (e^beta + T - 1) = mass. value="nop": the head's value map is orthogonal to CLS's normed
    input, so CLS writes nothing (v_CLS = 0); "broadcast": every value lies on one direction, CLS's the largest."""
    prefix = enc.num_prefix_tokens
    T = prefix + P
    enc.patch_embed.proj.weight[1] = enc.patch_embed.proj.weight[0]
    enc.patch_embed.proj.bias[1] = enc.patch_embed.proj.bias[0]
    enc.pos_embed[0, prefix:, 1] = enc.pos_embed[0, prefix:, 0]
    enc.cls_token.zero_()
    enc.cls_token[0, 0, 0], enc.cls_token[0, 0, 1] = 1.0, -1.0
    blk = enc.blocks[0]
    blk.norm1.weight[1], blk.norm1.bias[1] = blk.norm1.weight[0], blk.norm1.bias[0]
    x_cls = blk.norm1(enc.cls_token[0, 0] + enc.pos_embed[0, 0])
    f_cls = float(x_cls[0] - x_cls[1])
    beta = math.log(mass * (T - 1) / (1 - mass))
    w, b = blk.attn.qkv.weight, blk.attn.qkv.bias
    q, k, v = slice(0, HEAD_DIM), slice(WIDTH, WIDTH + HEAD_DIM), slice(2 * WIDTH, 2 * WIDTH + HEAD_DIM)
    w[q] = 0
    b[q] = 0
    b[q.start] = beta / blk.attn.scale
    w[k] = 0
    b[k] = 0
    w[k.start, 0], w[k.start, 1] = 1 / f_cls, -1 / f_cls
    unit = x_cls / x_cls.norm()
    if value == "nop":
        w[v] = w[v] - (w[v] @ unit)[:, None] * unit[None, :]
    else:
        w[v] = 0
        w[v.start] = 10 * unit  # CLS writes 10 ||x~_CLS|| along one direction
        w[v.start, 2] += 1.0  # the patches write along the same direction, by their coordinate 2
    b[v] = 0


@torch.no_grad()
def plant_outlier_neuron(enc: ViTEncoder, position: int, neuron: int, gain: float = 200.0, size: float = 100.0) -> None:
    """Block 1 writes a large token at patch `position` through MLP neuron `neuron` alone, whatever the image.

    The patch projection is zeroed, so block 1 sees the position embedding only; its attention branch is switched
    off (attn.proj zero); neuron `neuron` of its MLP fires on the normed token of `position` (fc1 row along it,
    with a threshold halfway between its own response and the next-highest position's), every other neuron is off,
    and fc2 writes `size` on dimension 0 at that position (its weight is size / the neuron's activation there).
    Blocks 2 and 3 keep their random weights."""
    prefix = enc.num_prefix_tokens
    enc.patch_embed.proj.weight.zero_()
    enc.patch_embed.proj.bias.zero_()
    blk = enc.blocks[0]
    blk.attn.proj.weight.zero_()
    blk.attn.proj.bias.zero_()
    tokens = blk.norm2(enc.pos_embed[0, prefix:])  # [P, D]: what the MLP sees at each position
    direction = tokens[position] / tokens[position].norm()
    response = tokens @ direction
    others = torch.cat([response[:position], response[position + 1 :]])
    threshold = (response[position] + others.max()) / 2
    fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
    fc1.weight.zero_()
    fc1.bias.fill_(-10.0)  # GELU(-10) ~ 0: the other neurons stay off
    fc1.weight[neuron] = gain * direction
    fc1.bias[neuron] = -gain * threshold
    fc2.weight.zero_()
    fc2.bias.zero_()
    fc2.weight[0, neuron] = size / torch.nn.functional.gelu(gain * (response[position] - threshold))


@torch.no_grad()
def plant_positional_direction(enc: ViTEncoder, amplitude: float = 20.0, dim: int = 0) -> None:
    """Dimension `dim` is written by the position embedding alone: +amplitude on the left half of the patch grid,
    -amplitude on the right half; the patch projection does not write it, and no block's branches do (their
    output rows `dim` are zeroed), so the output token's coordinate `dim` is the position's sign, scaled by the
    final norm."""
    prefix = enc.num_prefix_tokens
    enc.patch_embed.proj.weight[dim] = 0
    enc.patch_embed.proj.bias[dim] = 0
    cols = torch.arange(P) % GRID
    enc.pos_embed[0, prefix:, dim] = torch.where(cols < GRID // 2, amplitude, -amplitude)
    enc.pos_embed[0, :prefix, dim] = 0
    for blk in enc.blocks:
        blk.attn.proj.weight[dim] = 0
        blk.attn.proj.bias[dim] = 0
        blk.mlp.fc2.weight[dim] = 0
        blk.mlp.fc2.bias[dim] = 0
