"""Masking strategies: each scores patches; the shared keep_lowest turns scores into an MAE mask."""

from semmae.masking.base import Mask, MaskingStrategy, keep_lowest
from semmae.masking.random import RandomMasking

__all__ = ["Mask", "MaskingStrategy", "keep_lowest", "RandomMasking"]
