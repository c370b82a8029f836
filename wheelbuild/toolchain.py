"""Finds the CUDA build toolchain: nvcc and CUDA headers, CUTLASS/CuTe headers, ninja, a host C++ compiler.

Order for nvcc: the PyPI packages (`pip install "flashinfer-build[build]"`), then $CUDA_HOME (or
$CUDA_PATH), then nvcc on $PATH. $FLASHINFER_BUILD_TOOLCHAIN=pypi|system restricts the search to one
side. CUTLASS: $FLASHINFER_BUILD_CUTLASS_DIR (an include dir), else the `nvidia-cutlass` package.
The environment is passed in, so tests can describe any machine with a plain dict.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolchainError

CUDA_PIN = "13.0.*"
CUTLASS_PIN = "4.2.*"
PIP_BUILD_EXTRA = 'pip install "flashinfer-build[build]"'
PIP_CUDA = (
    f'pip install "nvidia-cuda-nvcc=={CUDA_PIN}" "nvidia-nvvm=={CUDA_PIN}" "nvidia-cuda-crt=={CUDA_PIN}" '
    f'"nvidia-cuda-runtime=={CUDA_PIN}" "nvidia-cuda-cccl=={CUDA_PIN}"'
)
PIP_CUTLASS = f'pip install "nvidia-cutlass=={CUTLASS_PIN}"'

# Files each PyPI part of the toolchain puts below nvidia/cu13/, and the package that brings them.
_PYPI_PARTS = {
    "bin/nvcc": "nvidia-cuda-nvcc",
    "nvvm/bin/cicc": "nvidia-nvvm",
    "include/crt/host_config.h": "nvidia-cuda-crt",
    "include/cuda_runtime.h": "nvidia-cuda-runtime",
    "lib/libcudart_static.a": "nvidia-cuda-runtime",
    "include/cccl/cuda/std/version": "nvidia-cuda-cccl",
}


@dataclass(frozen=True, kw_only=True)
class Toolchain:
    nvcc: Path
    nvcc_version: str  # "13.0.88"
    cuda_origin: str  # where nvcc came from, for doctor and error messages
    link_dirs: tuple[Path, ...]  # -L dirs the PyPI layout needs for libcudart_static.a
    cutlass_include: Path
    cutlass_version: str  # "4.2.0"
    ninja: Path
    host_compiler: Path
    host_compiler_version: str

    def versions(self) -> dict[str, str]:
        """What the cache key and the manifest record."""
        return {
            "nvcc": self.nvcc_version,
            "cutlass": self.cutlass_version,
            "host": self.host_compiler_version,
        }


def discover(env: Mapping[str, str] | None = None) -> Toolchain:
    """The toolchain for `env` (default: os.environ). Raises ToolchainError saying what is missing and how
    to install it."""
    env = dict(os.environ if env is None else env)
    nvcc, origin, link_dirs = find_nvcc(env)
    cutlass = find_cutlass(env)
    host = find_host_compiler(env)
    return Toolchain(
        nvcc=nvcc,
        nvcc_version=nvcc_version(nvcc),
        cuda_origin=origin,
        link_dirs=link_dirs,
        cutlass_include=cutlass,
        cutlass_version=cutlass_version(cutlass),
        ninja=find_ninja(env),
        host_compiler=host,
        host_compiler_version=host_compiler_version(host),
    )


def find_nvcc(env: Mapping[str, str]) -> tuple[Path, str, tuple[Path, ...]]:
    mode = env.get("FLASHINFER_BUILD_TOOLCHAIN", "auto")
    if mode not in ("auto", "pypi", "system"):
        raise ToolchainError(f"FLASHINFER_BUILD_TOOLCHAIN={mode!r}: use auto, pypi or system")
    looked: list[str] = []
    if mode in ("auto", "pypi"):
        root = pypi_cuda_root()
        if root is not None:
            missing = sorted({pkg for rel, pkg in _PYPI_PARTS.items() if not (root / rel).exists()})
            if missing:
                raise ToolchainError(
                    f"the PyPI CUDA toolchain in {root} is incomplete: {', '.join(missing)} missing. "
                    f"Install all its parts at one CUDA version: {PIP_CUDA}"
                )
            return root / "bin" / "nvcc", "PyPI packages", (root / "lib",)
        looked.append("the nvidia-cuda-nvcc package (not installed)")
    if mode in ("auto", "system"):
        for var in ("CUDA_HOME", "CUDA_PATH"):
            if env.get(var):
                candidate = Path(env[var]) / "bin" / "nvcc"
                if _is_executable(candidate):
                    return candidate, f"${var}", ()
                looked.append(f"${var}/bin/nvcc ({candidate}: not found)")
                break
        else:
            looked.append("$CUDA_HOME (unset)")
        on_path = shutil.which("nvcc", path=env.get("PATH", ""))
        if on_path:
            return Path(on_path), "PATH", ()
        looked.append("nvcc on $PATH (not found)")
    raise ToolchainError(
        f"nvcc not found; looked in: {'; '.join(looked)}. Install the CUDA {CUDA_PIN[:-2]} toolchain from "
        f"PyPI with: {PIP_BUILD_EXTRA}  (or: {PIP_CUDA}), or set CUDA_HOME to a CUDA {CUDA_PIN[:-2]} install"
    )


def pypi_cuda_root() -> Path | None:
    """nvidia/cu13 of the installed nvidia-cuda-nvcc wheel, if any."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "cu13"
        if (root / "bin" / "nvcc").is_file():
            return root
    return None


def find_cutlass(env: Mapping[str, str]) -> Path:
    if env.get("FLASHINFER_BUILD_CUTLASS_DIR"):
        include = Path(env["FLASHINFER_BUILD_CUTLASS_DIR"])
        origin = f"$FLASHINFER_BUILD_CUTLASS_DIR ({include})"
    else:
        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or spec.origin is None:
            raise ToolchainError(
                f"CUTLASS headers not found: the nvidia-cutlass package is not installed. "
                f"Install it with: {PIP_CUTLASS}  (or: {PIP_BUILD_EXTRA})"
            )
        include = Path(spec.origin).parent / "source" / "include"
        origin = f"the nvidia-cutlass package ({include})"
    for header in ("cutlass/cutlass.h", "cutlass/version.h", "cute/tensor.hpp"):
        if not (include / header).is_file():
            raise ToolchainError(
                f"CUTLASS headers not found: {origin} has no {header}. Install them with: {PIP_CUTLASS}"
            )
    return include


def find_ninja(env: Mapping[str, str]) -> Path:
    try:
        import ninja

        candidate = Path(ninja.BIN_DIR) / "ninja"
        if _is_executable(candidate):
            return candidate
    except ImportError:
        pass
    on_path = shutil.which("ninja", path=env.get("PATH", ""))
    if on_path:
        return Path(on_path)
    raise ToolchainError('ninja not found: install it with: pip install "ninja>=1.11"')


def find_host_compiler(env: Mapping[str, str]) -> Path:
    for name in ("g++", "c++"):
        found = shutil.which(name, path=env.get("PATH", ""))
        if found:
            return Path(found)
    raise ToolchainError(
        "no host C++ compiler (g++) on $PATH: nvcc needs one; on Debian/Ubuntu: apt-get install g++"
    )


def _version_output(tool: Path) -> str:
    try:
        return subprocess.run([str(tool), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise ToolchainError(f"{tool} --version failed: {e}") from None


@functools.lru_cache(maxsize=8)
def nvcc_version(nvcc: Path) -> str:
    out = _version_output(nvcc)
    m = re.search(r"\bV(\d+\.\d+\.\d+)", out)
    if not m:
        raise ToolchainError(f"cannot read the version from `{nvcc} --version`:\n{out}")
    return m[1]


@functools.lru_cache(maxsize=8)
def host_compiler_version(compiler: Path) -> str:
    out = _version_output(compiler)
    return out.splitlines()[0].strip() if out else "unknown"


def cutlass_version(include: Path) -> str:
    text = (include / "cutlass" / "version.h").read_text()
    parts = [re.search(rf"#define\s+CUTLASS_{p}\s+(\d+)", text) for p in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise ToolchainError(f"cannot read the CUTLASS version from {include / 'cutlass' / 'version.h'}")
    return ".".join(m[1] for m in parts)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
