"""Finds kernel packs (a build directory or an installed kernel wheel), checks they fit this GPU, and
opens their shared objects with ctypes.

A pack is a directory holding `manifest.json` (written by wheelbuild) and the shared object it names.
Search order for `find_kernel`: the directory in $FLASHINFER_BUILD_PACK (a pack, or a build
directory with one pack per arch below it), then installed kernel wheels (entry-point group
`flashinfer_build.kernel_packs`), then ./build. Among the packs that hold a variant, the one whose
arch fits the current GPU best wins (sm90a machine code on Hopper before the sm80 pack's PTX).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..variants import Variant, parse_id
from . import abi

ENTRY_POINT_GROUP = "flashinfer_build.kernel_packs"
MANIFEST = "manifest.json"

# Compute capabilities each pack arch runs on, best first: sm90a is Hopper-only machine code; the
# sm80 pack carries sm_80 machine code for 8.x and compute_80 PTX that newer drivers JIT-compile.
ARCH_RUNS_ON = {"sm90a": lambda cc: cc == (9, 0), "sm80": lambda cc: cc >= (8, 0)}
ARCH_PREFERENCE = ("sm90a", "sm80")

_CUDA_ERRORS = {
    209: "cudaErrorNoKernelImageForDevice: the pack has no machine code or PTX for this GPU",
    222: "cudaErrorUnsupportedPtxVersion: the pack's PTX is newer than this GPU driver supports; "
    "update the driver or install a pack built with an older CUDA toolchain",
    1: "cudaErrorInvalidValue",
    2: "cudaErrorMemoryAllocation",
    98: "cudaErrorInvalidDeviceFunction",
    700: "cudaErrorIllegalAddress",
}


class PackError(RuntimeError):
    """No usable kernel pack, or a pack that does not fit this GPU, driver or ABI."""


class KernelLaunchError(RuntimeError):
    """A kernel entry point returned a CUDA error."""


@dataclass(frozen=True)
class CompiledVariant:
    variant: Variant
    pack: KernelPack
    _run: object
    _info: object

    def run(self, params: ctypes.Structure, stream: int) -> None:
        err = self._run(ctypes.byref(params), ctypes.c_void_p(stream))
        if err:
            raise KernelLaunchError(f"{self.variant.id}: {describe_cuda_error(err, self.pack)}")

    @functools.cached_property
    def info(self) -> abi.KernelInfo:
        info = abi.KernelInfo()
        err = self._info(ctypes.byref(info))
        if err:
            raise KernelLaunchError(f"{self.variant.id}: {describe_cuda_error(err, self.pack)}")
        return info


class KernelPack:
    """One arch's kernels: a manifest and the shared object it names, opened on first use."""

    def __init__(self, path: Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as e:
            raise PackError(f"{manifest_path}: not a readable kernel pack manifest ({e})") from None
        if self.manifest.get("abi_version") != abi.ABI_VERSION:
            raise PackError(
                f"kernel pack {self.path} has ABI version {self.manifest.get('abi_version')}, this "
                f"flashinfer-build needs {abi.ABI_VERSION}: rebuild the pack or install matching versions"
            )
        self.arch: str = self.manifest["arch"]
        self.variants: dict[str, dict] = {entry["id"]: entry for entry in self.manifest["variants"]}

    def __repr__(self) -> str:
        return f"KernelPack({self.arch}, {len(self.variants)} variants, {self.path})"

    def fits(self, capability: tuple[int, int]) -> bool:
        return ARCH_RUNS_ON[self.arch](capability)

    @functools.cached_property
    def library(self) -> ctypes.CDLL:
        lib_path = self.path / self.manifest["library"]
        try:
            return ctypes.CDLL(str(lib_path))
        except OSError as e:
            raise PackError(f"cannot open {lib_path}: {e}") from None

    def planner(self, name: str):
        """The host planner entry point the manifest names under "planner" (e.g. "decode":
        kernels/native_plan.py declares its signature), or None for a pack built without it."""
        symbol = self.manifest.get("planner", {}).get(name)
        return None if symbol is None else getattr(self.library, symbol)

    def get(self, variant_id: str) -> CompiledVariant:
        entry = self.variants.get(variant_id)
        if entry is None:
            raise PackError(f"{variant_id} is not in {self}")
        run = getattr(self.library, entry["symbols"]["run"])
        run.argtypes, run.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
        info = getattr(self.library, entry["symbols"]["info"])
        info.argtypes, info.restype = [ctypes.c_void_p], ctypes.c_int
        return CompiledVariant(parse_id(variant_id), self, run, info)


def describe_cuda_error(code: int, pack: KernelPack | None = None) -> str:
    text = f"CUDA error {code} ({_CUDA_ERRORS.get(code, 'see cudaError_t')})"
    if pack is not None and code in (209, 222):
        text += (
            f"; pack arch {pack.arch}, toolchain {pack.manifest.get('toolchain', {})}, "
            f"minimum driver CUDA {pack.manifest.get('min_driver_cuda')}, GPU {_gpu_description()}"
        )
    return text


def _gpu_description() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none"
    cc = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (sm_{cc[0]}{cc[1]}, driver CUDA {torch.version.cuda})"


def _pack_dirs_below(root: Path) -> list[Path]:
    if (root / MANIFEST).is_file():
        return [root]
    return sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))


def installed_pack_dirs() -> list[Path]:
    dirs = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        module = ep.load()
        dirs.append(Path(module.__file__).parent)
    return dirs


def discover_packs(search: list[Path] | None = None) -> list[KernelPack]:
    """Every pack found, in search order (see module docstring)."""
    if search is None:
        search = []
        if os.environ.get("FLASHINFER_BUILD_PACK"):
            search += _pack_dirs_below(Path(os.environ["FLASHINFER_BUILD_PACK"]))
        search += installed_pack_dirs()
        search += _pack_dirs_below(Path("build"))
    return [KernelPack(d) for d in dict.fromkeys(p.resolve() for p in search)]


@functools.cache
def _packs_for_device(capability: tuple[int, int]) -> tuple[KernelPack, ...]:
    packs = [p for p in discover_packs() if p.fits(capability)]
    return tuple(sorted(packs, key=lambda p: ARCH_PREFERENCE.index(p.arch)))


_PINNED_ARCH: contextvars.ContextVar[str | None] = contextvars.ContextVar("fib_pinned_arch", default=None)


@contextlib.contextmanager
def pinned_arch(arch: str | None):
    """Within this block find_kernel takes kernels only from packs of `arch` (None: any). verify uses it
    to check the sm80 pack on a Hopper GPU, where the sm90a pack would otherwise win."""
    token = _PINNED_ARCH.set(arch)
    try:
        yield
    finally:
        _PINNED_ARCH.reset(token)


def find_kernel(variant: Variant, capability: tuple[int, int]) -> CompiledVariant:
    """The compiled form of `variant` (its arch is replaced by each pack's) from the pack that best fits
    a GPU of compute capability `capability` (only packs of the pinned arch inside `pinned_arch`)."""
    return _find_kernel(variant, capability, _PINNED_ARCH.get())


@functools.cache
def _find_kernel(variant: Variant, capability: tuple[int, int], arch: str | None) -> CompiledVariant:
    packs = tuple(p for p in _packs_for_device(capability) if arch is None or p.arch == arch)
    for pack in packs:
        variant_id = dataclasses.replace(variant, arch=pack.arch).id
        if variant_id in pack.variants:
            return pack.get(variant_id)
    everything = discover_packs()
    if not everything:
        raise PackError(
            "no kernel pack found: install a kernel wheel (pip install flashinfer-build-kernels-sm90a), "
            "set FLASHINFER_BUILD_PACK to a build directory, or run `flashinfer-build build`"
        )
    if not packs:
        archs = ", ".join(sorted({p.arch for p in everything}))
        raise PackError(
            f"no kernel pack fits this GPU (compute capability {capability[0]}.{capability[1]}): found packs "
            f"for {archs}; install the wheel for this GPU's arch"
        )
    same_family = sorted({i for p in packs for i in p.variants if i.startswith(variant.family + "_")})
    raise PackError(
        f"no pack for this GPU holds {variant.id} (any arch); its {variant.family} variants are: "
        f"{', '.join(same_family[:16]) or 'none'}. Add the variant to the matrix and rebuild."
    )
