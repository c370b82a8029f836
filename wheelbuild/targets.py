"""GPU targets: what each arch compiles to, which variants it builds, and what its pack is called."""

from __future__ import annotations

from dataclasses import dataclass

from ..variants import Variant
from .errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Target:
    arch: str  # the variant matrix's arch value
    sm: int  # ${SM} in the instantiation templates
    gencode: tuple[str, ...]
    machine_code: frozenset[int]  # SM versions of the cubins the pack must hold, and no others
    ptx: frozenset[int]  # virtual archs of the PTX it must hold, and no others

    @property
    def library(self) -> str:
        return f"libfib_kernels_{self.arch}.so"

    @property
    def distribution(self) -> str:
        return f"flashinfer-build-kernels-{self.arch}"

    @property
    def package(self) -> str:
        return f"flashinfer_build_kernels_{self.arch}"

    def builds(self, variant: Variant) -> bool:
        return variant.arch == self.arch


TARGETS: dict[str, Target] = {
    # Hopper machine code only: arch-specific (wgmma, TMA) code has no forward-compatible PTX.
    "sm90a": Target(
        arch="sm90a",
        sm=90,
        gencode=("-gencode=arch=compute_90a,code=sm_90a",),
        machine_code=frozenset({90}),
        ptx=frozenset(),
    ),
    # sm_80 machine code for the 8.x GPUs, plus compute_80 PTX the driver JIT-compiles on newer GPUs.
    "sm80": Target(
        arch="sm80",
        sm=80,
        gencode=("-gencode=arch=compute_80,code=[sm_80,compute_80]",),
        machine_code=frozenset({80}),
        ptx=frozenset({80}),
    ),
}


def target(arch: str) -> Target:
    try:
        return TARGETS[arch]
    except KeyError:
        raise ConfigError(f"unknown arch {arch!r}; archs are {', '.join(TARGETS)}") from None
