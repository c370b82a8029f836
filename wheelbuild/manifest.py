"""manifest.json of a kernel pack: what kernels/loader.py reads to find and check the variants.

    {"abi_version": 2, "arch": "sm90a", "builder_version": "0.1.0",
     "toolchain": {"nvcc": "13.0.88", "cutlass": "4.2.0", "host": "g++ ..."}, "min_driver_cuda": "13.0",
     "library": "libfib_kernels_sm90a.so", "planner": {"decode": "fib_plan_decode"},
     "variants": [{"id", "hash", "source_hash", "build_key", "family", "arch", "q_dtype", "kv_dtype",
                   "head_dim", "mask", "pos", "soft_cap",
                   "symbols": {"run": "fib_<id>_run", "info": "fib_<id>_info"}}]}

Variants are sorted by id and keys by name, so the same pack always gives the same bytes.
"""

from __future__ import annotations

import json
from importlib import metadata

from ..kernels.abi import ABI_VERSION
from ..variants import Variant

MANIFEST = "manifest.json"


def builder_version() -> str:
    try:
        return metadata.version("flashinfer-build")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def min_driver_cuda(nvcc_version: str) -> str:
    """A driver runs PTX and cubins from its own CUDA minor or older (DESIGN.md, "Wheels")."""
    major, minor = nvcc_version.split(".")[:2]
    return f"{major}.{minor}"


def variant_entry(variant: Variant, *, source_hash: str, build_key: str) -> dict:
    return {
        **variant.to_dict(),
        "hash": variant.hash,
        "source_hash": source_hash,
        "build_key": build_key,
        "symbols": {"run": f"{variant.symbol}_run", "info": f"{variant.symbol}_info"},
    }


def render_manifest(
    *, arch: str, library: str, versions: dict[str, str], entries: list[dict], planner: dict | None = None
) -> str:
    """planner: the host planner's entry points by name (wheelbuild/planner.py), when the library has it."""
    manifest = {
        "abi_version": ABI_VERSION,
        "arch": arch,
        "builder_version": builder_version(),
        "toolchain": versions,
        "min_driver_cuda": min_driver_cuda(versions["nvcc"]),
        "library": library,
        "variants": sorted(entries, key=lambda e: e["id"]),
    }
    if planner:
        manifest["planner"] = dict(planner)
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"
