"""Every diagnostic of docs/artifacts.md over one stream of image batches, beside the artifact metrics: the head-sink
taxonomy, the CLS statistics, high-norm outliers and their register neurons, the semantic invariance of the patch
tokens' principal components, and the asymmetry between the pretraining and the full view. One explicit-attention
capture per batch feeds the attention diagnostics; the outliers' neurons, the invariance score and the pretraining
view each add a forward pass of their own. Each part's time is kept (Diagnosis.timings)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from semmae.analysis import asymmetry as AS
from semmae.analysis import cls_stats as C
from semmae.analysis import head_sinks as HS
from semmae.analysis import register_neurons as RN
from semmae.analysis.artifacts import (
    ArtifactAccumulator,
    ArtifactMeasurement,
    ArtifactSettings,
    block_key,
    patch_grid,
    shallow_means,
)
from semmae.analysis.capture import capture
from semmae.analysis.invariance import Invariance, InvarianceAccumulator, InvarianceSettings
from semmae.errors import ConfigError
from semmae.masking.base import MaskingStrategy

PARTS = ("heads", "cls", "outliers", "invariance", "asymmetry")
ATTENTION_ONLY = ("heads", "cls")  # what one attention capture gives: the training callback's parts


@dataclass(frozen=True)
class DiagnosticSettings:
    """The settings of every diagnostic (conf/analysis/artifacts.yaml) and the parts to run."""

    artifacts: ArtifactSettings = ArtifactSettings()
    sinks: HS.SinkThresholds = HS.SinkThresholds()
    outliers: RN.OutlierSettings = RN.OutlierSettings()
    invariance: InvarianceSettings = InvarianceSettings()
    asymmetry: AS.AsymmetrySettings = AS.AsymmetrySettings()
    parts: tuple[str, ...] = PARTS

    def __post_init__(self):
        parts = (self.parts,) if isinstance(self.parts, str) else tuple(self.parts)
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise ConfigError(f"analysis.parts={list(parts)}: {unknown} unknown; choose from {list(PARTS)}")
        object.__setattr__(self, "parts", parts)

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> DiagnosticSettings:
        """From the analysis node: tau, k, flat_fraction, shallow_blocks, and the sinks / outliers / invariance /
        asymmetry sub-nodes and parts (each optional)."""

        def sub(kind, key):
            value = node.get(key)
            try:
                return kind(**dict(value)) if value else kind()
            except TypeError as exc:
                raise ConfigError(f"analysis.{key}: {exc}") from None

        artifacts = ArtifactSettings(
            **{k: node[k] for k in ("tau", "k", "flat_fraction", "shallow_blocks") if k in node}
        )
        return cls(
            artifacts=artifacts,
            sinks=sub(HS.SinkThresholds, "sinks"),
            outliers=sub(RN.OutlierSettings, "outliers"),
            invariance=sub(InvarianceSettings, "invariance"),
            asymmetry=sub(AS.AsymmetrySettings, "asymmetry"),
            parts=tuple(node.get("parts", PARTS) or ()),
        )


@dataclass
class Diagnosis:
    artifacts: ArtifactMeasurement
    settings: DiagnosticSettings
    heads: list[HS.BlockHeads] | None = None
    cls: list[dict[str, float]] | None = None
    outliers: dict[str, Any] | None = None
    register_neurons: list[dict[str, Any]] | None = None
    invariance: Invariance | None = None
    asymmetry: AS.Asymmetry | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return self.artifacts.depth

    def block_values(self) -> list[dict[str, float]]:
        """Per block (0-based): the head-class counts and sink mass, and the CLS statistics."""
        out = [{} for _ in range(self.depth)]
        for i in range(self.depth):
            if self.heads is not None:
                out[i].update(self.heads[i].scalars())
            if self.cls is not None:
                out[i].update(self.cls[i])
        return out

    def scalars(self, prefix: str = "attn") -> dict[str, float]:
        """Flat keys, as the artifact metrics: '<prefix>/block_03/nop_heads', '<prefix>/shallow_cls_cls', ...,
        '<prefix>/nop_heads' (over all blocks), '<prefix>/outlier_fraction', '<prefix>/si_count', and
        'asym/block_03/<metric>', 'asym/shallow_<metric>'."""
        out = self.artifacts.scalars(prefix)
        blocks = self.block_values()
        for i, values in enumerate(blocks):
            out.update({f"{prefix}/{block_key(i + 1, self.depth)}/{k}": v for k, v in values.items()})
        if blocks and blocks[0]:
            _, shallow = shallow_means(blocks, self.settings.artifacts.shallow_blocks, list(blocks[0]))
            out.update({f"{prefix}/{k}": v for k, v in shallow.items() if v is not None})
        if self.heads is not None:
            for name in ("nop_heads", "broadcast_heads", "other_heads"):
                out[f"{prefix}/{name}"] = float(sum(b[name] for b in blocks))
        if self.outliers is not None:
            out.update({f"{prefix}/{k}": float(self.outliers[k]) for k in ("outlier_fraction", "images_with_outliers")})
        if self.invariance is not None:
            top = self.invariance.top(1)
            out[f"{prefix}/si_count"] = float(self.invariance.count())
            if top:
                out[f"{prefix}/si_top"] = top[0]["score"]
        if self.asymmetry is not None:
            out.update({k: v for k, v in self.asymmetry.scalars().items() if v is not None})
        return out

    def to_dict(self) -> dict[str, Any]:
        """artifacts.json: the artifact measurement's keys, then one key per diagnostic that ran (strict JSON)."""
        out = self.artifacts.to_dict()
        out["diagnostic_settings"] = {k: v for k, v in asdict(self.settings).items() if k != "artifacts"}
        if self.heads is not None:
            out["heads"] = [
                {
                    "block": i + 1,
                    **b.counts(),
                    "sink_mass": b.scalars()["sink_mass"],
                    "heads": [
                        {
                            "head": h,
                            "class": b.classes[h],
                            "position": b.positions[h],
                            "sink_token": b.sink_token[h],
                            "mass": b.mass[h],
                            "routed_frac": b.routed_frac[h],
                            "ratio_out": b.ratio_out[h],
                            "stable_rank": b.stable_rank[h],
                            "class_shares": b.class_shares[h],
                        }
                        for h in range(len(b.classes))
                    ],
                }
                for i, b in enumerate(self.heads)
            ]
        if self.cls is not None:
            out["cls"] = [{"block": i + 1, **c} for i, c in enumerate(self.cls)]
        if self.outliers is not None:
            out["outliers"] = {**self.outliers, "register_neurons": self.register_neurons or []}
        if self.invariance is not None:
            out["invariance"] = self.invariance.to_dict(self.settings.invariance.top)
        if self.asymmetry is not None:
            out["asymmetry"] = self.asymmetry.to_dict()
        out["timings_s"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out


class _Clock:
    def __init__(self):
        self.spent: dict[str, float] = defaultdict(float)

    @contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent[name] += time.perf_counter() - start


def diagnose(
    encoder: nn.Module,
    batches: Callable[[], Iterable[torch.Tensor]],
    settings: DiagnosticSettings = DiagnosticSettings(),
    keep_images: int = 0,
    masking: MaskingStrategy | None = None,
    synthetic: Callable[[int], Iterable[torch.Tensor]] | None = None,
) -> Diagnosis:
    """Every part of settings.parts on the images of batches() (a callable, so that the invariance score can read
    them again when their tokens were too many to keep). masking: the strategy of the asymmetry's pretraining view,
    at its own mask ratio; synthetic(n): n content-free images in batches, normalised as the real ones."""
    parts = settings.parts
    if "asymmetry" in parts and masking is None:
        raise ConfigError("the asymmetry needs a masking strategy for the pretraining view")
    if "invariance" in parts and synthetic is None:
        raise ConfigError("the semantic-invariance score needs synthetic images")
    device = next(encoder.parameters()).device
    grid = patch_grid(encoder)
    depth = len(encoder.blocks)
    clock = _Clock()
    artifacts = ArtifactAccumulator(settings.artifacts, grid, keep_images)
    heads = HS.HeadSinkAccumulator(settings.sinks) if "heads" in parts else None
    cls = C.ClsAccumulator() if "cls" in parts else None
    outliers = neurons = None
    if "outliers" in parts:
        outliers = RN.OutlierAccumulator(settings.outliers, grid[0] * grid[1])
        detect = settings.outliers.detection_block(depth)
        neurons = RN.NeuronScores(depth, RN.mlp_width(encoder), device)
    inv = InvarianceAccumulator(settings.invariance, depth) if "invariance" in parts else None
    pre = None
    if "asymmetry" in parts:
        pre = {
            "artifacts": ArtifactAccumulator(settings.artifacts, grid),
            "heads": HS.HeadSinkAccumulator(settings.sinks) if heads is not None else None,
            "cls": C.ClsAccumulator() if cls is not None else None,
        }
        generator = torch.Generator(device=device).manual_seed(int(settings.asymmetry.seed))
    visible = 0
    for images in batches():
        images = images.to(device)
        with clock.part("capture"):
            cap = capture(encoder, images, values=heads is not None, residual=cls is not None)
        with clock.part("artifacts"):
            artifacts.update(cap, images)
        if heads is not None:
            with clock.part("heads"):
                heads.update(cap)
        if cls is not None:
            with clock.part("cls"):
                cls.update(cap)
        if outliers is not None:
            with clock.part("outliers"):
                mask = outliers.update(cap.tokens[detect], cap.num_prefix_tokens)
                neurons.update(encoder, images, mask)
        if inv is not None:
            with clock.part("invariance"):
                inv.update(inv.select(cap.output, cap.tokens, cap.num_prefix_tokens))
        if pre is not None:
            with clock.part("asymmetry"):
                m = AS.pretraining_mask(masking, images, grid, generator, cap.output[:, cap.num_prefix_tokens :])
                visible = m.ids_keep.shape[1]
                mcap = capture(encoder, images, ids_keep=m.ids_keep, values=heads is not None, residual=cls is not None)
                pre["artifacts"].update(mcap, images)
                if pre["heads"] is not None:
                    pre["heads"].update(mcap)
                if pre["cls"] is not None:
                    pre["cls"].update(mcap)
        del cap
    out = Diagnosis(artifacts=artifacts.result(), settings=settings)
    prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    if heads is not None:
        out.heads = heads.result()
    if cls is not None:
        out.cls = cls.result()
    if outliers is not None:
        out.outliers = outliers.result()
        out.outliers["detection_block"] = detect + 1
        out.register_neurons = neurons.ranked(detect + 1, settings.outliers.top_k)
    if inv is not None:
        with clock.part("invariance"):
            n_synth = settings.invariance.synthetic_images or inv.num_real
            out.invariance = inv.finish(encoder, batches, synthetic(n_synth))
    if pre is not None:
        with clock.part("asymmetry"):
            num_patches = grid[0] * grid[1]
            full = AS.view_values(out.artifacts, out.cls, out.heads, prefix + num_patches, num_patches, prefix)
            pre_artifacts = pre["artifacts"].result()
            pretraining = AS.view_values(
                pre_artifacts,
                pre["cls"].result() if pre["cls"] else None,
                pre["heads"].result() if pre["heads"] else None,
                prefix + visible,
                visible,
                prefix,
            )
            out.asymmetry = AS.asymmetry(
                full,
                pretraining,
                settings.artifacts.shallow_blocks,
                repr(masking),
                masking.mask_ratio,
                visible,
                {"full": prefix + num_patches, "pretraining": prefix + visible},
            )
    out.timings = dict(clock.spent)
    return out
