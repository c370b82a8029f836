"""What verify and bench can run here: the GPU, the kernel packs found, and which selected variants they hold.

Problems of the environment (no GPU, no pack, a pack for another GPU, selected variants that were never
built) raise `EnvironmentProblem` with a message saying what to do; the CLI turns it into exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...variants import Variant
from .. import loader


class EnvironmentProblem(RuntimeError):
    """verify or bench cannot run here as asked; the message says what to do."""


@dataclass
class Runnable:
    """The selected variants that can run here, and the ones left out with the reason."""

    variants: list[Variant]
    skipped: dict[str, str] = field(default_factory=dict)  # variant id -> reason
    packs: list[dict] = field(default_factory=list)
    gpu: str | None = None


def gpu_description() -> str:
    cc = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (sm_{cc[0]}{cc[1]})"


def runnable_on_gpu(variants: list[Variant], *, archs_requested: bool = False) -> Runnable:
    """Selected variants whose pack is found and can run on this GPU. Variants of an arch that cannot run
    on this GPU are skipped (an error when the user asked for that arch with --arch); selected variants
    missing from every pack are an error: verify must not pass what it never ran."""
    if not torch.cuda.is_available():
        raise EnvironmentProblem(
            "no CUDA GPU is visible: run on a machine with a GPU, or use --device cpu to check the scheduler "
            "through its CPU emulation"
        )
    cc = torch.cuda.get_device_capability()
    try:
        packs = loader.discover_packs()
    except loader.PackError as e:
        raise EnvironmentProblem(str(e)) from None
    if not packs:
        raise EnvironmentProblem(
            "no kernel pack found: build one (flashinfer-build build), point FLASHINFER_BUILD_PACK at a "
            "build directory, or install a kernel wheel"
        )
    built = {vid: p for p in packs for vid in p.variants}
    result = Runnable([], packs=[{"arch": p.arch, "path": str(p.path)} for p in packs], gpu=gpu_description())
    wrong_gpu, missing = [], []
    for v in variants:
        if not loader.ARCH_RUNS_ON[v.arch](cc):
            wrong_gpu.append(v)
            result.skipped[v.id] = f"{v.arch} kernels do not run on sm_{cc[0]}{cc[1]}"
        elif v.id not in built:
            missing.append(v.id)
        else:
            result.variants.append(v)
    if wrong_gpu and archs_requested:
        archs = sorted({v.arch for v in wrong_gpu})
        raise EnvironmentProblem(f"{', '.join(archs)} kernels cannot run on this GPU ({result.gpu})")
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        found = ", ".join(f"{p.arch} ({len(p.variants)} variants, {p.path})" for p in packs)
        raise EnvironmentProblem(
            f"{len(missing)} selected variants are in no kernel pack: {shown}. Packs found: {found}. Build "
            "them (flashinfer-build build with the same selection) or narrow the selection (--preset, "
            "--only, --skip, --arch)"
        )
    if not result.variants:
        raise EnvironmentProblem(f"none of the selected variants can run on this GPU ({result.gpu})")
    return result
