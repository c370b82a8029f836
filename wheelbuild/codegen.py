"""Renders one instantiation source per variant from kernels/csrc/instantiate/<family>.cu.in.

Placeholders (string.Template): ${GENERATED_NOTE} ${VARIANT_ID} ${SYMBOL} ${Q_TYPE} ${KV_TYPE}
${HEAD_DIM} ${MASK} ${POS} ${SOFT_CAP} ${SM}. Files are written only when their text changes, so
their timestamps move only with their content.
"""

from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

from ..variants import Variant
from .errors import ConfigError
from .targets import target

CUTLASS_TYPES = {
    "fp16": "cutlass::half_t",
    "bf16": "cutlass::bfloat16_t",
    "fp8e4m3": "cutlass::float_e4m3_t",
    "fp8e5m2": "cutlass::float_e5m2_t",
}
MASK_MODES = {
    "none": "fib::MaskMode::kNone",
    "causal": "fib::MaskMode::kCausal",
    "custom": "fib::MaskMode::kCustom",
    "sliding_window": "fib::MaskMode::kSlidingWindow",
}
POS_ENCODINGS = {
    "none": "fib::PosEncoding::kNone",
    "rope": "fib::PosEncoding::kRope",
    "alibi": "fib::PosEncoding::kAlibi",
}


def template_path(csrc: Path, family: str) -> Path:
    return csrc / "instantiate" / f"{family}.cu.in"


# The wgmma prefill mainloop (docs/HOPPER_MAINLOOP.md): a build option (on by default), not a variant
# axis: it renders the same sm90a prefill variant ids from another template, and turning it off gives
# the sm80 mainloop that the sm80 pack also compiles.
SM90_PREFILL_TEMPLATE = "prefill_sm90.cu.in"


def uses_sm90_prefill_mainloop(variant: Variant) -> bool:
    """Whether the option gives this variant the wgmma mainloop. Head dim 64 without a mask keeps the sm80
    one: there the wgmma kernel was no faster (2026-11-27: -1.5% at 8k tokens and -5% at 2k on an H200, +3.5%
    and +-0 on an H100), while it was 7-62% faster on every other benchmarked shape on both cards
    (docs/PERFORMANCE.md, "wgmma prefill mainloop on the GPU")."""
    return (
        variant.family == "prefill"
        and variant.arch == "sm90a"
        and not (variant.head_dim == 64 and variant.mask == "none")
    )


def variant_template(csrc: Path, variant: Variant, *, sm90_prefill_mainloop: bool = True) -> Path:
    if sm90_prefill_mainloop and uses_sm90_prefill_mainloop(variant):
        return csrc / "instantiate" / SM90_PREFILL_TEMPLATE
    return template_path(csrc, variant.family)


def substitutions(variant: Variant, template_name: str) -> dict[str, str]:
    return {
        "GENERATED_NOTE": f"// Generated from kernels/csrc/instantiate/{template_name} for {variant.id} by "
        "flashinfer-build: do not edit.",
        "VARIANT_ID": variant.id,
        "SYMBOL": variant.symbol,
        "Q_TYPE": CUTLASS_TYPES[variant.q_dtype],
        "KV_TYPE": CUTLASS_TYPES[variant.kv_dtype],
        "HEAD_DIM": str(variant.head_dim),
        "MASK": MASK_MODES[variant.mask],
        "POS": POS_ENCODINGS[variant.pos],
        "SOFT_CAP": "true" if variant.soft_cap else "false",
        "SM": str(target(variant.arch).sm),
    }


def render(variant: Variant, csrc: Path, *, sm90_prefill_mainloop: bool = True) -> str:
    path = variant_template(csrc, variant, sm90_prefill_mainloop=sm90_prefill_mainloop)
    try:
        return string.Template(path.read_text()).substitute(substitutions(variant, path.name))
    except KeyError as e:
        raise ConfigError(
            f"{path}: unknown placeholder ${{{e.args[0]}}}; placeholders are "
            f"{', '.join(substitutions(variant, path.name))}"
        ) from None
    except ValueError as e:
        raise ConfigError(f"{path}: {e} (write a literal $ as $$)") from None


def write_if_different(path: Path, text: str) -> bool:
    """Write `text` to `path` atomically unless it already holds exactly that; True if written."""
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, data)
    return True


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
