"""Attention analysis: capture every block's attention on full images, measure artifacts (docs/artifacts.md),
draw them. Reads a model, never trains one."""

from semmae.analysis.artifacts import ArtifactMeasurement, ArtifactSettings, block_key, measure
from semmae.analysis.capture import Capture, attention_capture, capture, find_encoder
from semmae.analysis.metrics import METRICS

__all__ = [
    "METRICS",
    "ArtifactMeasurement",
    "ArtifactSettings",
    "Capture",
    "attention_capture",
    "block_key",
    "capture",
    "find_encoder",
    "measure",
]
