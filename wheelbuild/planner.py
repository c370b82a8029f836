"""The host planner's unit (kernels/csrc/plan/planner.cpp): host C++ linked into every pack, and a
host-only shared object of it for machines without nvcc (CPU tests, benchmarks/plan_time.py).

The manifest names its entry points under "planner"; kernels/native_plan.py calls them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE = Path("plan") / "planner.cpp"  # relative to the kernel sources (kernels/csrc)
SYMBOLS = {
    "decode": "fib_plan_decode",
    "decode_upload": "fib_plan_decode_upload",
    "prefill": "fib_plan_prefill",
    "prefill_upload": "fib_plan_prefill_upload",
}
LABEL = "planner"  # its build edge's label and its object's name in the cache
# No FMA contraction: the planner's float64 cost model must round exactly as Python's does.
HOST_FLAGS = ("-std=c++17", "-O2", "-DNDEBUG", "-fPIC", "-ffp-contract=off")


def source(csrc: Path) -> Path | None:
    """The planner's source under `csrc`, or None when this source tree has none (a pack without it
    plans in Python)."""
    path = Path(csrc) / SOURCE
    return path if path.is_file() else None


def nvcc_flags() -> tuple[str, ...]:
    """HOST_FLAGS as nvcc passes them to the host compiler (host code: no GPU targets), with the upload
    entry point that packs add (it calls the CUDA runtime the pack links)."""
    return ("-DFIB_PLAN_UPLOAD", *(f for flag in HOST_FLAGS for f in ("-Xcompiler", flag)))


def build_host_library(csrc: Path, out: Path, compiler: str = "c++") -> Path:
    """Compile the planner alone into the shared object `out` with the host C++ compiler."""
    src = source(csrc)
    if src is None:
        raise FileNotFoundError(f"no planner source {Path(csrc) / SOURCE}")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [compiler, *HOST_FLAGS, "-shared", str(src), "-o", str(out)], check=True, capture_output=True
    )
    return out
