"""Test-time registers, a training-free fix (docs/artifacts.md#training-free-fixes), after Jiang, Dravid et al.,
"Vision Transformers Don't Need Trained Registers" (NeurIPS 2025) and their public code
(nickjiang2378/test-time-registers, shared/hook_fn.py): K zero-initialised tokens join the prefix, and on the
register neurons (the MLP units that make the high-norm outliers, register_neurons.py) each image's extreme
activation over its patches is given to those tokens while the neurons are zeroed on the patches, so that the
outliers form on the registers instead of on image patches.

The tokens sit after CLS and any trained registers ([CLS, registers, test-time registers, patches]), so the
encoder's num_prefix_tokens grows by K and everything that reads it (pooling, timm's forward_intermediates, the
artifact metrics) leaves them out like registers. They are inserted where timm adds the position embedding
(`_pos_embed`, run with the original prefix), which every forward path goes through; `forward_visible` (the
pretraining view) is rebuilt on the same path. The state dict does not change: a fixed encoder saves and loads as
the plain one."""

from __future__ import annotations

from types import MethodType

import torch
from torch import nn

from semmae.analysis.capture import timm_visible_forward
from semmae.analysis.register_neurons import NeuronScores, OutlierSettings, mlp_width, outlier_mask
from semmae.errors import ConfigError


def sign_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The entry of largest magnitude along dim, with its sign (the paper's sign_max, per image and neuron)."""
    hi, lo = x.amax(dim=dim), x.amin(dim=dim)
    return torch.where(hi.abs() >= lo.abs(), hi, lo)


def find_register_neurons(encoder: nn.Module, batches, settings: OutlierSettings, top_k: int) -> tuple[list[dict], int]:
    """Calibration: the top_k (block, neuron) pairs by their mean |activation| at the outliers of the detection
    block over the images of batches (register_neurons.py), and the number of outliers seen."""
    depth = len(encoder.blocks)
    detect = settings.detection_block(depth)
    device = next(encoder.parameters()).device
    scores = NeuronScores(depth, mlp_width(encoder), device)
    n_outliers = 0
    npt = int(encoder.num_prefix_tokens)
    for images in batches:
        images = images.to(device)
        out: list[torch.Tensor] = []
        handle = encoder.blocks[detect].register_forward_hook(lambda _m, _i, o, out=out: out.append(o))
        training = [(m, m.training) for m in encoder.modules()]
        try:
            encoder.eval()
            with torch.no_grad():
                encoder.forward_features(images)
        finally:
            handle.remove()
            for m, flag in training:
                m.training = flag
        mask = outlier_mask(out[0], npt, settings.ratio, settings.norm)
        n_outliers += int(mask.sum())
        scores.update(encoder, images, mask)
    return scores.ranked(detect + 1, top_k), n_outliers


class RegistersAtTestTime(nn.Module):
    """The K tokens and the register neurons of one encoder; attach() installs them, detach() restores the encoder.
    neurons: {0-based block: [neuron indices]}."""

    __test__ = False  # not a pytest class

    def __init__(self, num_registers: int, neurons: dict[int, list[int]]):
        super().__init__()
        if num_registers < 1:
            raise ConfigError(f"encoder.test_time_registers={num_registers}: give the number of tokens, >= 1")
        self.num_registers = int(num_registers)
        self.neurons = {int(b): sorted(int(n) for n in idx) for b, idx in neurons.items()}
        for b, idx in self.neurons.items():
            self.register_buffer(f"neurons_{b}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.first = 0  # index of the first test-time register (set by attach)
        self._handles: list = []

    def describe(self) -> str:
        pairs = ", ".join(f"{b + 1}:{n}" for b, idx in self.neurons.items() for n in idx)
        return f"{self.num_registers} test-time register(s) on neurons (block:neuron) {pairs}"

    def _pos_embed(self, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        n0, k = self.first, self.num_registers
        encoder.num_prefix_tokens = n0  # timm's resampling of the position embedding splits off this prefix
        try:
            x = type(encoder)._pos_embed(encoder, x)
        finally:
            encoder.num_prefix_tokens = n0 + k
        return torch.cat([x[:, :n0], x.new_zeros(x.shape[0], k, x.shape[2]), x[:, n0:]], dim=1)

    def _mlp_hook(self, block: int):
        def hook(_module, _inputs, output):
            idx = getattr(self, f"neurons_{block}")
            n0, k = self.first, self.num_registers
            out = output.clone()
            value = sign_max(output[:, n0 + k :, idx], dim=1)  # [B, n]: per image and neuron, over the patches
            out[:, n0 : n0 + k, idx] = value[:, None, :].expand(-1, k, -1).to(out.dtype)
            out[:, n0 + k :, idx] = 0
            return out

        return hook

    def attach(self, encoder: nn.Module) -> None:
        if getattr(encoder, "test_time_registers", None) is not None:
            raise ConfigError("this encoder already has test-time registers")
        self.first = int(encoder.num_prefix_tokens)
        encoder.test_time_registers = self  # a submodule: moves with the encoder, holds no state-dict entry
        encoder._pos_embed = MethodType(_pos_embed_with_registers, encoder)
        encoder.forward_visible = MethodType(timm_visible_forward, encoder)  # through the patched _pos_embed
        encoder.num_prefix_tokens = self.first + self.num_registers
        encoder.num_reg_tokens = int(getattr(encoder, "num_reg_tokens", 0)) + self.num_registers
        for b in self.neurons:
            self._handles.append(encoder.blocks[b].mlp.act.register_forward_hook(self._mlp_hook(b)))

    def detach(self, encoder: nn.Module) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        for name in ("_pos_embed", "forward_visible"):
            encoder.__dict__.pop(name, None)
        encoder.num_prefix_tokens = self.first
        encoder.num_reg_tokens = int(encoder.num_reg_tokens) - self.num_registers
        del encoder.test_time_registers


def _pos_embed_with_registers(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return encoder.test_time_registers._pos_embed(encoder, x)


def neurons_by_block(ranked: list[dict]) -> dict[int, list[int]]:
    """Ranked pairs with 1-based blocks -> {0-based block: [neurons]}."""
    out: dict[int, list[int]] = {}
    for pair in ranked:
        out.setdefault(int(pair["block"]) - 1, []).append(int(pair["neuron"]))
    return out
