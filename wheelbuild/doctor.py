"""`flashinfer-build doctor`: the toolchain, the GPU, and which kernel packs fit it, as plain data."""

from __future__ import annotations

import ctypes
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .errors import ToolchainError
from .status import read_manifest
from .toolchain import discover


def toolchain_report(env: Mapping[str, str]) -> dict:
    try:
        tc = discover(env)
    except ToolchainError as e:
        return {"ok": False, "error": str(e)}
    return {
        "ok": True,
        "nvcc": {"path": str(tc.nvcc), "version": tc.nvcc_version, "from": tc.cuda_origin},
        "cutlass": {"include": str(tc.cutlass_include), "version": tc.cutlass_version},
        "ninja": {"path": str(tc.ninja), "version": _first_line([str(tc.ninja), "--version"])},
        "host_compiler": {"path": str(tc.host_compiler), "version": tc.host_compiler_version},
    }


def gpu_report() -> dict:
    """GPU name, compute capability and driver through torch, if torch and a GPU are present."""
    try:
        import torch
    except ImportError:
        return {"present": False, "reason": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"present": False, "reason": "no CUDA GPU visible to torch", "torch": torch.__version__}
    major, minor = torch.cuda.get_device_capability()
    return {
        "present": True,
        "name": torch.cuda.get_device_name(),
        "capability": [major, minor],
        "driver_cuda": driver_cuda_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }


def driver_cuda_version() -> str | None:
    """The CUDA version the installed driver supports (cuDriverGetVersion), e.g. "13.0"."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def packs_report(gpu: dict, build_dir: Path) -> list[dict]:
    from ..kernels.loader import ARCH_RUNS_ON, _pack_dirs_below, installed_pack_dirs

    found = [("installed", d) for d in installed_pack_dirs()] + [
        ("build", d) for d in _pack_dirs_below(build_dir)
    ]
    report = []
    for origin, pack_dir in found:
        manifest = read_manifest(pack_dir) or {}
        arch = manifest.get("arch", "?")
        entry = {
            "origin": origin,
            "path": str(pack_dir),
            "arch": arch,
            "variants": len(manifest.get("variants", [])),
            "abi_version": manifest.get("abi_version"),
            "min_driver_cuda": manifest.get("min_driver_cuda"),
            "toolchain": manifest.get("toolchain", {}),
        }
        if gpu.get("present") and arch in ARCH_RUNS_ON:
            fits_arch = ARCH_RUNS_ON[arch](tuple(gpu["capability"]))
            driver_ok = _version_at_least(gpu.get("driver_cuda"), manifest.get("min_driver_cuda"))
            entry["fits"] = bool(fits_arch and driver_ok)
            entry["why"] = (
                "" if fits_arch else f"{arch} code does not run on sm_{''.join(map(str, gpu['capability']))}"
            ) or (
                ""
                if driver_ok
                else f"driver supports CUDA {gpu.get('driver_cuda')}, the pack "
                f"needs {manifest.get('min_driver_cuda')}"
            )
        report.append(entry)
    return report


def _version_at_least(have: str | None, need: str | None) -> bool:
    if not have or not need:
        return True
    return tuple(map(int, have.split("."))) >= tuple(map(int, need.split(".")))


def _first_line(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"
