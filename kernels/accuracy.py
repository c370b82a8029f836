"""The accuracy rule verify and bench apply to kernel outputs, and the poisoning that exposes unwritten ones.

Rule (FlashAttention-3's tests): against a high-precision reference `ref`, the tested output may err by
at most `factor` times the error PyTorch itself makes computing the same attention in the output's
precision (`ref_low`), plus an atol of two roundings at the output's precision:

    max|out - ref| <= factor * max|ref_low - ref| + 2 * max|round(round(ref + 0.3) - 0.3) - ref|

Rows the reference leaves without a visible key (lse = -inf) must come back as o = 0 and lse = -inf
exactly, and are left out of the error statistics. Outputs are poisoned before a run with a NaN whose
payload no arithmetic produces, so an element still holding it was never written; any other NaN was
computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

DEFAULT_FACTOR = 3.0

# NaN bit patterns with a payload that canonical NaNs (CUDA: 0x7fff, 0x7fffffff; CPUs: ...) never have.
_POISON = {
    torch.bfloat16: (torch.int16, 0x7FA5),
    torch.float16: (torch.int16, 0x7E5A),
    torch.float32: (torch.int32, 0x7FA5A5A5),
    torch.float64: (torch.int64, 0x7FF4A5A5A5A5A5A5),
}


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill `t` with the poison NaN of its dtype, in place; returns `t`."""
    int_dtype, bits = _poison_bits(t.dtype)
    t.view(int_dtype).fill_(bits)
    return t


def poisoned_like(t: torch.Tensor) -> torch.Tensor:
    return poison_(torch.empty_like(t))


def unwritten(t: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the elements of `t` that still hold the poison pattern."""
    int_dtype, bits = _poison_bits(t.dtype)
    return t.contiguous().view(int_dtype) == bits


def _poison_bits(dtype: torch.dtype) -> tuple[torch.dtype, int]:
    if dtype not in _POISON:
        raise TypeError(f"cannot poison a {dtype} tensor; poisonable dtypes: {', '.join(map(str, _POISON))}")
    return _POISON[dtype]


@dataclass
class Comparison:
    """Outcome of comparing one output tensor (o or lse) with its reference."""

    max_abs_err: float
    rel_err: float  # ||out - ref|| / ||ref|| over the rows with a visible key
    tolerance: float
    elements: int
    unwritten: int  # elements still holding the poison NaN
    nan: int  # other NaNs
    empty_row_errors: int  # elements of rows without a visible key that are not exactly 0 (o) or -inf (lse),
    # or (merge) of rows without a state that were overwritten

    @property
    def passed(self) -> bool:
        return (
            self.unwritten == 0
            and self.nan == 0
            and self.empty_row_errors == 0
            and self.max_abs_err <= self.tolerance
        )

    def problem(self) -> str:
        """What is wrong, in words; "" when it passed."""
        found = []
        if self.unwritten:
            found.append(f"{self.unwritten} of {self.elements} elements never written")
        if self.nan:
            found.append(f"{self.nan} NaN")
        if self.empty_row_errors:
            found.append(
                f"{self.empty_row_errors} elements of empty rows wrong (no key: not 0 / -inf; "
                "no merge state: overwritten)"
            )
        if self.max_abs_err > self.tolerance:
            found.append(f"max abs error {self.max_abs_err:.3g} > tolerance {self.tolerance:.3g}")
        return "; ".join(found)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def merge(comparisons: list[Comparison]) -> Comparison:
    """Several comparisons of one kind of output as one: counts add up; max_abs_err and tolerance are
    the pair of the comparison closest to (or furthest past) its tolerance, so they stay comparable."""
    worst = max(comparisons, key=lambda c: c.max_abs_err / c.tolerance if c.tolerance else float("inf"))
    return Comparison(
        max_abs_err=worst.max_abs_err,
        rel_err=max(c.rel_err for c in comparisons),
        tolerance=worst.tolerance,
        elements=sum(c.elements for c in comparisons),
        unwritten=sum(c.unwritten for c in comparisons),
        nan=sum(c.nan for c in comparisons),
        empty_row_errors=sum(c.empty_row_errors for c in comparisons),
    )


def compare(
    out: torch.Tensor,
    ref: torch.Tensor,
    ref_low: torch.Tensor,
    *,
    empty_rows: torch.Tensor | None = None,
    empty_value: float = 0.0,
    factor: float = DEFAULT_FACTOR,
) -> Comparison:
    """Compare `out` with the high-precision `ref`, allowing `factor` times the error of `ref_low`.

    out, ref, ref_low: same shape, the first dim indexing rows ([tokens, heads, ...]).
    empty_rows: boolean of leading shape (e.g. [tokens, heads]) marking rows with no visible key, which
    must equal `empty_value` exactly (0 for o, -inf for lse)."""
    if out.shape != ref.shape or ref_low.shape != ref.shape:
        raise ValueError(
            f"shapes differ: out {tuple(out.shape)}, ref {tuple(ref.shape)}, ref_low {tuple(ref_low.shape)}"
        )
    not_written = unwritten(out) if out.dtype in _POISON else torch.zeros_like(out, dtype=torch.bool)
    ref64, out64 = ref.double(), out.double()
    computed_nan = torch.isnan(out64) & ~not_written
    if empty_rows is None:
        empty_rows = torch.zeros(out.shape[: out.dim()], dtype=torch.bool, device=out.device)
    empty = empty_rows.reshape(*empty_rows.shape, *([1] * (out.dim() - empty_rows.dim()))).expand(out.shape)
    empty_errors = empty & ~not_written & ~computed_nan & (out64 != empty_value)
    live = ~empty & ~not_written & ~computed_nan
    diff = (out64 - ref64).abs().where(live, torch.zeros((), dtype=torch.float64, device=out.device))
    max_abs = float(diff.max()) if diff.numel() else 0.0
    ref_live = ref64.where(live, torch.zeros((), dtype=torch.float64, device=out.device))
    ref_norm = float(ref_live.norm())
    rel = float(diff.norm()) / ref_norm if ref_norm > 0 else (0.0 if max_abs == 0 else float("inf"))
    return Comparison(
        max_abs_err=max_abs,
        rel_err=rel,
        tolerance=tolerance(ref, ref_low, out.dtype, live=~empty, factor=factor),
        elements=out.numel(),
        unwritten=int(not_written.sum()),
        nan=int(computed_nan.sum()),
        empty_row_errors=int(empty_errors.sum()),
    )


def tolerance(
    ref: torch.Tensor,
    ref_low: torch.Tensor,
    dtype: torch.dtype,
    *,
    live: torch.Tensor | None = None,
    factor: float = DEFAULT_FACTOR,
) -> float:
    """factor * max|ref_low - ref| + two roundings at `dtype`, over the `live` elements (see module doc)."""
    ref64 = ref.double()
    if live is None:
        live = torch.ones_like(ref64, dtype=torch.bool)
    live = live & torch.isfinite(ref64)
    zero = torch.zeros((), dtype=torch.float64, device=ref.device)
    low_err = (ref_low.double() - ref64).abs().where(live, zero)
    rounded = ((ref64.to(dtype) + 0.3) - 0.3).double()  # two roundings in `dtype`, as the tested code makes
    rounding = (rounded - ref64).abs().where(live, zero)
    if not low_err.numel():
        return 0.0
    return factor * float(low_err.nan_to_num(0.0).max()) + 2 * float(rounding.nan_to_num(0.0).max())
