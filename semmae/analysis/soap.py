"""SOAP, a training-free fix (docs/artifacts.md#training-free-fixes), after Hjelkrem-Tan et al. (CVPR 2026) and their
public code (dsb-ifi/soap, soap/soap.py): the principal components of the patch tokens that answer alike with and
without image content (high semantic invariance, invariance.py) are projected out of the patch tokens,
x -> (I - V diag(w) V^T) x, with SOAP's soft rank cutoff on w, at the encoder's output (after its final norm) or
after a chosen block. Prefix tokens (CLS, registers) are left as they are. The projector is a buffer that is not
saved: a fixed encoder's state dict is the plain one's."""

from __future__ import annotations

import torch
from torch import nn

from semmae.errors import ConfigError


class SoapProjection(nn.Module):
    """The projector [D, D] and where it acts (block None = the output of encoder.norm; n = block n's output)."""

    def __init__(self, projector: torch.Tensor, block: int | None = None, components: list[int] | None = None):
        super().__init__()
        self.register_buffer("projector", projector.float(), persistent=False)
        self.block = block
        self.components = components or []  # 1-based component ranks projected out (weight > 1e-3)
        self._handle = None

    def describe(self) -> str:
        where = "the output" if self.block is None else f"block {self.block}"
        return f"SOAP at {where}: components {self.components} projected out"

    def _hook(self, _module, _inputs, output):
        npt = int(self._prefix())
        patches = output[:, npt:]
        projected = (patches.float() @ self.projector.T).to(output.dtype)
        return torch.cat([output[:, :npt], projected], dim=1)

    def attach(self, encoder: nn.Module) -> None:
        if getattr(encoder, "soap", None) is not None:
            raise ConfigError("this encoder already has a SOAP projection")
        if self.block is not None and not 1 <= self.block <= len(encoder.blocks):
            raise ConfigError(
                f"encoder.fix.soap_block={self.block}: must be between 1 and the depth "
                f"({len(encoder.blocks)}), or null for the output"
            )
        encoder.soap = self
        self._prefix = lambda: encoder.num_prefix_tokens
        target = encoder.norm if self.block is None else encoder.blocks[self.block - 1]
        self._handle = target.register_forward_hook(self._hook)

    def detach(self, encoder: nn.Module) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        del encoder.soap
