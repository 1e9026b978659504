"""Masking strategies: each scores patches; the shared keep_lowest turns scores into an MAE mask."""

from semmae.masking.base import Mask, MaskingStrategy, keep_lowest
from semmae.masking.block import BlockMasking
from semmae.masking.colored_noise import ColoredNoiseMasking
from semmae.masking.grid import GridMasking
from semmae.masking.random import RandomMasking
from semmae.masking.random_units import RandomUnitsMasking
from semmae.masking.semantic import SemanticMasking
from semmae.masking.semantic_features import SemanticFeaturesMasking
from semmae.masking.semantic_informative import SemanticInformativeMasking
from semmae.masking.semantic_stratified import SemanticStratifiedMasking

__all__ = [
    "Mask",
    "MaskingStrategy",
    "keep_lowest",
    "RandomMasking",
    "BlockMasking",
    "GridMasking",
    "SemanticMasking",
    "ColoredNoiseMasking",
    "SemanticInformativeMasking",
    "SemanticFeaturesMasking",
    "SemanticStratifiedMasking",
    "RandomUnitsMasking",
]
