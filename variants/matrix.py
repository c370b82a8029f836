"""The variant matrix: products of axis values from preset or user TOML files, and selection by pattern.

A matrix file holds one or more `[[block]]` tables. Each block names a list of values per axis
(axes left out take their default) and expands to the product of those lists; combinations that
RULES forbid are pruned and counted, never built. Optional `exclude` tables drop combinations by
axis values. `description` and `compile_minutes` document the file.

    description = "..."
    [[block]]
    family = ["decode"]
    arch = ["sm80", "sm90a"]
    kv_dtype = ["bf16", "fp8e4m3"]
    [[exclude]]
    family = "decode"
    head_dim = 256
"""

from __future__ import annotations

import fnmatch
import itertools
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .variant import AXES, AXIS_NAMES, InvalidVariant, Variant, invalid_reason

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS = ("ci", "default", "full")


@dataclass(frozen=True)
class Matrix:
    """An ordered, duplicate-free list of variants plus what was pruned from the products and why."""

    variants: tuple[Variant, ...]
    pruned: dict[str, int] = field(default_factory=dict)  # reason -> how many combinations
    description: str = ""

    def __len__(self) -> int:
        return len(self.variants)

    def __iter__(self):
        return iter(self.variants)

    def ids(self) -> list[str]:
        return [v.id for v in self.variants]


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}")
    return Path(str(resources.files(__package__) / "presets" / f"{name}.toml"))


def load_matrix(source: str | Path) -> Matrix:
    """A preset name (`ci`, `default`, `full`) or the path of a user's matrix TOML file."""
    path = preset_path(str(source)) if str(source) in PRESETS else Path(source)
    if not path.is_file():
        if path.suffix != ".toml" and len(path.parts) == 1:
            raise FileNotFoundError(f"unknown preset {str(source)!r} (presets: {', '.join(PRESETS)})")
        raise FileNotFoundError(f"matrix file {path} does not exist (presets: {', '.join(PRESETS)})")
    with path.open("rb") as f:
        data = tomllib.load(f)
    try:
        return expand(data)
    except InvalidVariant as e:
        raise InvalidVariant(f"{path}: {e}") from None


def expand(data: dict) -> Matrix:
    blocks = data.get("block", [])
    if not blocks:
        raise InvalidVariant("a matrix needs at least one [[block]] table")
    excludes = data.get("exclude", [])
    for table in [*blocks, *excludes]:
        unknown = set(table) - set(AXIS_NAMES)
        if unknown:
            raise InvalidVariant(f"unknown axis {sorted(unknown)}; axes are {', '.join(AXIS_NAMES)}")
    seen: dict[str, Variant] = {}
    pruned: dict[str, int] = {}
    for block in blocks:
        axes = {name: _as_list(block.get(name, _default(name))) for name in AXIS_NAMES}
        for values in itertools.product(*axes.values()):
            kwargs = dict(zip(axes, values, strict=True))
            if any(all(kwargs.get(k) == val for k, val in ex.items()) for ex in excludes):
                continue
            try:
                v = Variant(**kwargs)
            except InvalidVariant:
                reason = _reason_for(kwargs)
                pruned[reason] = pruned.get(reason, 0) + 1
                continue
            seen.setdefault(v.id, v)
    return Matrix(tuple(seen.values()), pruned, data.get("description", ""))


def select(
    matrix: Matrix,
    *,
    only: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
    archs: tuple[str, ...] = (),
) -> Matrix:
    """Variants whose id matches an `only` glob (all if none), no `skip` glob, and an arch in `archs`."""
    for arch in archs:
        if arch not in AXES["arch"]:
            raise ValueError(f"unknown arch {arch!r}; archs are {', '.join(AXES['arch'])}")
    kept = tuple(
        v
        for v in matrix
        if (not only or any(fnmatch.fnmatchcase(v.id, p) for p in only))
        and not any(fnmatch.fnmatchcase(v.id, p) for p in skip)
        and (not archs or v.arch in archs)
    )
    return Matrix(kept, matrix.pruned, matrix.description)


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def _default(name: str):
    if name == "kv_dtype":
        return ""  # same as q_dtype
    return AXES[name][0]


def _reason_for(kwargs: dict) -> str:
    """The RULES reason for a combination that Variant() rejected."""
    probe = _Unchecked(**{**kwargs, "kv_dtype": kwargs.get("kv_dtype") or kwargs.get("q_dtype", "bf16")})
    return invalid_reason(probe) or "invalid axis value"


@dataclass(frozen=True)
class _Unchecked:
    """The axis values of a rejected combination, for looking up which rule rejected it."""

    family: str
    arch: str
    q_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    head_dim: int = 128
    mask: str = "none"
    pos: str = "none"
    soft_cap: bool = False
