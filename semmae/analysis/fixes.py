"""The training-free fixes as an encoder option of every evaluation entry point (docs/artifacts.md#training-free-fixes):
`encoder.test_time_registers=K` and `encoder.soap=true`, calibrated on the first `encoder.fix.images` images of the
training split in its evaluation view (the synthetic content-free images too, for SOAP), then attached to the
built encoder. The step after the encoder is built: semmae-analyze, -linprobe, -finetune and -segment call
fix_encoder; semmae-export refuses the options (it writes weights; a fix is applied where an encoder runs).

An option that has nothing to fix (no high-norm outliers; no semantically invariant component) says so in a warning
and leaves the encoder as it is."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from semmae.analysis.capture import find_encoder
from semmae.analysis.invariance import InvarianceAccumulator, InvarianceSettings, patch_tokens, projector, soap_weights
from semmae.analysis.register_neurons import OutlierSettings
from semmae.analysis.registers_at_test_time import RegistersAtTestTime, find_register_neurons, neurons_by_block
from semmae.analysis.soap import SoapProjection
from semmae.analysis.synthetic_images import synthetic_batches
from semmae.errors import ConfigError

FIX_KEYS = ("test_time_registers", "soap", "fix")  # what the encoder node holds beside the build overrides


@dataclass(frozen=True)
class FixSettings:
    """test_time_registers: K tokens (0 = off); soap: project out the semantically invariant components; images:
    calibration images; register_neurons: the top (block, neuron) pairs the registers take over; outlier_block /
    outlier_ratio / outlier_norm: how outliers are found (register_neurons.OutlierSettings); soap_block: where SOAP
    acts (None = the output); soap_mu / soap_tau / soap_threshold: its soft rank cutoff (invariance.soap_weights);
    seed: of the synthetic images."""

    test_time_registers: int = 0
    soap: bool = False
    images: int = 256
    register_neurons: int = 10
    outlier_block: int | None = None
    outlier_ratio: float = 10.0
    outlier_norm: float | None = None
    soap_block: int | None = None
    soap_mu: float | None = None
    soap_tau: float = 0.05
    soap_threshold: float = 0.75
    seed: int = 0

    def __post_init__(self):
        k = self.test_time_registers
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"encoder.test_time_registers={k!r}: a whole number of tokens, >= 0 (0 = off)")
        if not isinstance(self.soap, bool):
            raise ConfigError(f"encoder.soap={self.soap!r}: true or false")
        if self.images < 1 or self.register_neurons < 1:
            raise ConfigError(
                f"encoder.fix.images={self.images}, encoder.fix.register_neurons="
                f"{self.register_neurons}: both must be >= 1"
            )
        if not self.soap_tau > 0:
            raise ConfigError(f"encoder.fix.soap_tau={self.soap_tau}: must be > 0 (default 0.05)")
        self.outliers()  # checks ratio and norm

    @property
    def requested(self) -> bool:
        return self.test_time_registers > 0 or self.soap

    def outliers(self) -> OutlierSettings:
        return OutlierSettings(
            block=self.outlier_block, ratio=self.outlier_ratio, norm=self.outlier_norm, top_k=self.register_neurons
        )

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> FixSettings:
        """From the top-level `encoder` node: test_time_registers, soap, and the `fix` sub-node."""
        node = dict(node or {})
        fix = dict(node.get("fix") or {})
        try:
            return cls(
                test_time_registers=node.get("test_time_registers") or 0,
                soap=False if node.get("soap") is None else node.get("soap"),
                **fix,
            )
        except TypeError as exc:
            raise ConfigError(f"encoder.fix: {exc}") from None


def calibration_images(datamodule: Any, limit: int, device: torch.device | str | None = None) -> list[torch.Tensor]:
    """The first `limit` images of the training split in its evaluation view (no augmentation)."""
    from semmae.analysis.artifacts import batch_images

    out = [
        images.float()
        for batch in datamodule.eval_batches("train", device, limit=limit)
        if (images := batch_images(batch)) is not None
    ]
    if not out:
        raise ConfigError(f"{type(datamodule).__name__} gave no training images to calibrate the training-free fixes")
    return out


def apply_fixes(encoder: nn.Module, settings: FixSettings, images: list[torch.Tensor], mean, std) -> list[str]:
    """Calibrate and attach the requested fixes to encoder (test-time registers first, then SOAP calibrated on the
    encoder they leave); -> one line per fix attached. mean / std: the normalisation of the images (for the
    synthetic ones)."""
    done = []
    depth = len(encoder.blocks)
    if settings.soap and settings.soap_block is not None and not 1 <= settings.soap_block <= depth:
        raise ConfigError(
            f"encoder.fix.soap_block={settings.soap_block}: must be between 1 and the depth ({depth}), "
            "or null for the output"
        )
    if settings.test_time_registers > 0:
        ranked, n_outliers = find_register_neurons(encoder, images, settings.outliers(), settings.register_neurons)
        if n_outliers == 0:
            block = settings.outliers().detection_block(len(encoder.blocks)) + 1
            warnings.warn(
                f"encoder.test_time_registers={settings.test_time_registers}: no high-norm outliers at "
                f"block {block} on {sum(len(x) for x in images)} calibration images (norm > "
                f"{settings.outlier_ratio:g} x the median): nothing to move, the encoder is left as it is",
                stacklevel=2,
            )
        else:
            ttr = RegistersAtTestTime(settings.test_time_registers, neurons_by_block(ranked))
            ttr.to(next(encoder.parameters()).device)
            ttr.attach(encoder)
            done.append(ttr.describe())
    if settings.soap:
        inv_settings = InvarianceSettings(
            block=settings.soap_block, threshold=settings.soap_threshold, seed=settings.seed
        )
        acc = InvarianceAccumulator(inv_settings, len(encoder.blocks))
        for x in images:
            acc.update(patch_tokens(encoder, x.to(next(encoder.parameters()).device), settings.soap_block))
        size = encoder.patch_embed.img_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        channels = int(encoder.patch_embed.proj.in_channels)
        inv = acc.finish(
            encoder, lambda: images, synthetic_batches(acc.num_real, channels, size, mean, std, settings.seed)
        )
        scores = torch.where(inv.scored, inv.scores, torch.zeros_like(inv.scores))
        weights = soap_weights(scores, settings.soap_mu, settings.soap_tau, settings.soap_threshold)
        components = [int(i) + 1 for i in (weights > 1e-3).nonzero().flatten()]
        if not components:
            warnings.warn(
                f"encoder.soap=true: no component of the patch tokens scores >= {settings.soap_threshold:g} "
                "in semantic invariance: nothing to project out, the encoder is left as it is",
                stacklevel=2,
            )
        else:
            proj = SoapProjection(projector(inv.vectors, weights.double()), settings.soap_block, components)
            proj.to(next(encoder.parameters()).device)
            proj.attach(encoder)
            done.append(proj.describe())
    return done


def remove_fixes(encoder: nn.Module) -> None:
    """Detach whatever fixes the encoder has (the encoder is then as built)."""
    if getattr(encoder, "soap", None) is not None:
        encoder.soap.detach(encoder)
    if getattr(encoder, "test_time_registers", None) is not None:
        encoder.test_time_registers.detach(encoder)


def fix_encoder(
    cfg: Mapping[str, Any], model: nn.Module, datamodule: Any, device: torch.device | str | None = None, task: str = ""
) -> dict[str, Any] | None:
    """The entry points' step after the model is built: the fixes cfg.encoder asks for, on the model's encoder,
    calibrated on `device` (the encoder comes back where it was). -> the record for results.json, None when none
    was asked."""
    settings = FixSettings.from_config(cfg.get("encoder"))
    if not settings.requested:
        return None
    encoder = find_encoder(model)
    if task == "segment" and settings.soap and settings.soap_block is None:
        raise ConfigError(
            "encoder.soap=true acts on the encoder's output, which the segmenter does not read (it "
            "taps block outputs): set encoder.fix.soap_block=N, a block up to the last one it taps"
        )
    where = next(encoder.parameters()).device
    if device is not None:
        encoder.to(device)
    try:
        images = calibration_images(datamodule, settings.images, device)
        done = apply_fixes(
            encoder, settings, images, getattr(datamodule, "mean", (0.5,)), getattr(datamodule, "std", (0.5,))
        )
    finally:
        encoder.to(where)
    return {"settings": asdict(settings), "applied": done}
