"""`flashinfer-build doctor`: the toolchain, the GPU, and which kernel packs fit it, as plain data."""

from __future__ import annotations

import ctypes
import subprocess
from collections.abc import Mapping
from pathlib import Path

from . import toolchain
from .errors import ToolchainError
from .status import read_manifest


def toolchain_report(env: Mapping[str, str]) -> dict:
    """Each part of the toolchain on its own, so one missing part does not hide the others:
    {"ok": bool, part: {"path"/"include", "version", ...} or {"error": message}}."""

    def nvcc() -> dict:
        path, origin, _ = toolchain.find_nvcc(env)
        return {"path": str(path), "version": toolchain.nvcc_version(path), "from": origin}

    def cutlass() -> dict:
        include = toolchain.find_cutlass(env)
        return {"include": str(include), "version": toolchain.cutlass_version(include)}

    def ninja() -> dict:
        path = toolchain.find_ninja(env)
        return {"path": str(path), "version": _first_line([str(path), "--version"])}

    def host_compiler() -> dict:
        path = toolchain.find_host_compiler(env)
        return {"path": str(path), "version": toolchain.host_compiler_version(path)}

    report: dict = {}
    probes = {"nvcc": nvcc, "cutlass": cutlass, "ninja": ninja, "host_compiler": host_compiler}
    for name, probe in probes.items():
        try:
            report[name] = probe()
        except ToolchainError as e:
            report[name] = {"error": str(e)}
    report["ok"] = not any("error" in part for part in report.values())
    return report


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
