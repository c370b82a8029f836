"""Where each selected variant stands: built (in the build directory), cached (its object is in the
cache), installed (an installed kernel wheel has it), or missing. Also what installed packs provide.

`flashinfer-build list --json` prints `listing()` / `installed_listing()`; their schema is in
README.md ("list --json") and versioned by LIST_SCHEMA.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..variants import Matrix, Variant
from .build import plan_build, select_matrix
from .errors import ConfigError, ToolchainError
from .manifest import MANIFEST
from .options import BuildOptions
from .toolchain import Toolchain

LIST_SCHEMA = 1
STATUSES = ("built", "installed", "cached", "missing")


@dataclass(frozen=True, kw_only=True)
class VariantStatus:
    variant: Variant
    built: bool
    cached: bool | None  # None: unknown (no toolchain, or no template for its family)
    installed: bool

    @property
    def status(self) -> str:
        """The first that applies of built, installed, cached, missing."""
        if self.built:
            return "built"
        if self.installed:
            return "installed"
        return "cached" if self.cached else "missing"

    def to_dict(self) -> dict:
        v = self.variant
        return {
            "id": v.id,
            "family": v.family,
            "arch": v.arch,
            "q_dtype": v.q_dtype,
            "kv_dtype": v.kv_dtype,
            "head_dim": v.head_dim,
            "mask": v.mask,
            "pos": v.pos,
            "soft_cap": v.soft_cap,
            "hash": v.hash,
            "status": self.status,
            "built": self.built,
            "cached": self.cached,
            "installed": self.installed,
        }


@dataclass(frozen=True, kw_only=True)
class InstalledPack:
    path: Path
    arch: str
    builder_version: str
    toolchain: dict
    variants: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "arch": self.arch,
            "builder_version": self.builder_version,
            "toolchain": self.toolchain,
            "variants": list(self.variants),
        }


def read_manifest(pack_dir: Path) -> dict | None:
    try:
        return json.loads((pack_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def installed_packs() -> list[InstalledPack]:
    from ..kernels.loader import installed_pack_dirs

    packs = []
    for pack_dir in installed_pack_dirs():
        manifest = read_manifest(pack_dir)
        if manifest is None:
            continue
        packs.append(
            InstalledPack(
                path=pack_dir,
                arch=manifest.get("arch", "?"),
                builder_version=manifest.get("builder_version", "?"),
                toolchain=manifest.get("toolchain", {}),
                variants=tuple(e["id"] for e in manifest.get("variants", [])),
            )
        )
    return packs


def variant_statuses(
    options: BuildOptions, toolchain: Toolchain | None
) -> tuple[Matrix, list[VariantStatus]]:
    """The selected matrix and the status of each of its variants."""
    matrix = select_matrix(options)
    built: dict[str, str] = {}  # id -> build key, from the build directory's manifests
    for arch in options.archs:
        manifest = read_manifest(options.build_dir / arch) or {}
        built.update({e["id"]: e.get("build_key", "") for e in manifest.get("variants", [])})
    installed = {i for pack in installed_packs() for i in pack.variants}
    keys: dict[str, tuple[str, bool]] = {}  # id -> (build key, object cached)
    if toolchain is not None and len(matrix):
        try:
            plan = plan_build(options, toolchain)
            keys = {u.id: (u.key, u.cached) for u in plan.units}
        except (ConfigError, ToolchainError):
            keys = {}
    result = []
    for v in matrix:
        key, cached = keys.get(v.id, (None, None))
        is_built = v.id in built and (key is None or built[v.id] == key)
        result.append(VariantStatus(variant=v, built=is_built, cached=cached, installed=v.id in installed))
    return matrix, result


def listing(options: BuildOptions, matrix: Matrix, statuses: list[VariantStatus]) -> dict:
    counts = {s: sum(1 for x in statuses if x.status == s) for s in STATUSES}
    return {
        "schema": LIST_SCHEMA,
        "matrix": options.matrix,
        "archs": list(options.archs),
        "counts": {"total": len(statuses), **counts},
        "pruned": dict(sorted(matrix.pruned.items())),
        "variants": [s.to_dict() for s in statuses],
    }


def installed_listing(packs: list[InstalledPack]) -> dict:
    return {
        "schema": LIST_SCHEMA,
        "counts": {"packs": len(packs), "variants": sum(len(p.variants) for p in packs)},
        "packs": [p.to_dict() for p in packs],
    }
