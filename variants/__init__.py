"""The declarative variant matrix: what can be built, named one canonical way."""

from .matrix import PRESETS, Matrix, expand, load_matrix, select
from .variant import AXES, FP8_DTYPES, RULES, InvalidVariant, Variant, parse_id

__all__ = [
    "AXES",
    "FP8_DTYPES",
    "PRESETS",
    "RULES",
    "InvalidVariant",
    "Matrix",
    "Variant",
    "expand",
    "load_matrix",
    "parse_id",
    "select",
]
