"""Attention analysis: capture every block's attention on full images, measure artifacts and the field's
diagnostics (docs/artifacts.md), draw them; the training-free fixes. Reads a model, never trains one."""

from semmae.analysis.artifacts import ArtifactMeasurement, ArtifactSettings, block_key, measure
from semmae.analysis.capture import Capture, attention_capture, capture, find_encoder
from semmae.analysis.diagnostics import Diagnosis, DiagnosticSettings, diagnose
from semmae.analysis.metrics import METRICS

__all__ = [
    "METRICS",
    "ArtifactMeasurement",
    "ArtifactSettings",
    "Capture",
    "DiagnosticSettings",
    "Diagnosis",
    "attention_capture",
    "block_key",
    "diagnose",
    "capture",
    "find_encoder",
    "measure",
]
