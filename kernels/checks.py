"""Validation of the tensors and scalars handed to the kernels: every problem becomes an InvalidArgument
that names the argument and says what was expected, before anything reaches the GPU.

Device-side checks only read tensor metadata (no host sync). The index checks that need values
(monotone indptr, page ids in range) are separate functions that copy to the host, for callers that
ask for them (`check_indices=True`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

ALIGN_BYTES = 16  # the kernels move 16-byte vectors


class InvalidArgument(ValueError):
    """An argument the kernels cannot take; the message names it."""


DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8e4m3": torch.float8_e4m3fn,
    "fp8e5m2": torch.float8_e5m2,
}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPE_NAMES[name]


def _dtypes_text(dtypes: Sequence[torch.dtype]) -> str:
    return " or ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(
    name: str,
    t,
    *,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    shape: Sequence[int | None] | None = None,
    contiguous: bool = False,
    inner_contiguous: bool = False,
    align_bytes: int = 0,
) -> torch.Tensor:
    """Checks one tensor. shape entries of None match any size. inner_contiguous: the last dim has
    stride 1 and every other stride (and the data pointer) is a multiple of align_bytes."""
    if not isinstance(t, torch.Tensor):
        raise InvalidArgument(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if t.dtype not in allowed:
            got = _dtypes_text([t.dtype])
            raise InvalidArgument(f"{name} must have dtype {_dtypes_text(allowed)}, got {got}")
    if shape is not None:
        mismatch = t.dim() != len(shape) or any(
            s is not None and s != n for s, n in zip(shape, t.shape, strict=False)
        )
        if mismatch:
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise InvalidArgument(f"{name} must have shape {want}, got {list(t.shape)}")
    if device is not None and t.device != device:
        raise InvalidArgument(f"{name} is on {t.device}, expected {device} (where the other inputs are)")
    if device is None and t.device.type != "cuda":
        raise InvalidArgument(f"{name} must be a CUDA tensor, got a tensor on {t.device}")
    if contiguous and not t.is_contiguous():
        raise InvalidArgument(f"{name} must be contiguous, got strides {list(t.stride())}")
    if inner_contiguous and t.numel() > 0:
        if t.stride(-1) != 1:
            raise InvalidArgument(
                f"{name} must have a contiguous last dimension (stride 1), got strides {list(t.stride())}"
            )
        check_alignment(name, t, align_bytes)
    elif align_bytes and t.numel() > 0 and t.data_ptr() % align_bytes:
        raise InvalidArgument(f"{name}'s data pointer must be {align_bytes}-byte aligned")
    return t


def check_alignment(name: str, t: torch.Tensor, align_bytes: int) -> None:
    if not align_bytes:
        return
    if t.data_ptr() % align_bytes:
        raise InvalidArgument(f"{name}'s data pointer must be {align_bytes}-byte aligned (a sliced view?)")
    for dim in range(t.dim() - 1):
        if t.shape[dim] > 1 and (t.stride(dim) * t.element_size()) % align_bytes:
            raise InvalidArgument(
                f"{name}'s stride {t.stride(dim)} of dim {dim} is not a multiple of {align_bytes} bytes"
            )
    if (t.shape[-1] * t.element_size()) % align_bytes:
        raise InvalidArgument(
            f"{name}'s last dimension ({t.shape[-1]}) is not a multiple of {align_bytes} bytes"
        )


def check_index(name: str, t, *, device: torch.device, length: int | None = None) -> torch.Tensor:
    """An index array: int32, 1-D, contiguous, on `device`, optionally of a given length."""
    if not isinstance(t, torch.Tensor):
        raise InvalidArgument(f"{name} must be a torch.Tensor of int32, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise InvalidArgument(f"{name} must have dtype int32, got {_dtypes_text([t.dtype])}")
    if t.device != device:
        raise InvalidArgument(f"{name} is on {t.device}, expected {device} (where the other inputs are)")
    if t.dim() != 1:
        raise InvalidArgument(f"{name} must be 1-D, got shape {list(t.shape)}")
    if length is not None and t.shape[0] != length:
        raise InvalidArgument(f"{name} must have length {length}, got {t.shape[0]}")
    if not t.is_contiguous():
        raise InvalidArgument(f"{name} must be contiguous")
    return t


def check_scalar(name: str, value, *, positive: bool = False, minimum: float | None = None) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InvalidArgument(f"{name} must be finite, got {x}")
    if positive and x <= 0:
        raise InvalidArgument(f"{name} must be > 0, got {x}")
    if minimum is not None and x < minimum:
        raise InvalidArgument(f"{name} must be >= {minimum}, got {x}")
    return x


def check_same_device(device: torch.device, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise InvalidArgument(f"{name} is on {t.device}, expected {device} (where the other inputs are)")


# Host-side checks of index values (they copy to the host, which synchronizes).


def check_indptr_values(name: str, indptr: torch.Tensor, *, total: int | None = None) -> list[int]:
    """indptr starts at 0, never decreases, and (when total is given) ends at most at total."""
    values = indptr.tolist()
    if values and values[0] != 0:
        raise InvalidArgument(f"{name}[0] must be 0, got {values[0]}")
    for i in range(len(values) - 1):
        if values[i + 1] < values[i]:
            raise InvalidArgument(
                f"{name} must be non-decreasing: {name}[{i + 1}] = {values[i + 1]} < {name}[{i}] = "
                f"{values[i]}"
            )
    if total is not None and values and values[-1] > total:
        raise InvalidArgument(f"{name}[-1] = {values[-1]} exceeds the {total} entries it indexes")
    return values


def check_page_ids(name: str, indices: torch.Tensor, num_pages: int, used: int) -> None:
    """The first `used` page ids lie in [0, num_pages)."""
    if used == 0:
        return
    ids = indices[:used]
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_pages:
        bad = lo if lo < 0 else hi
        raise InvalidArgument(f"{name} holds page id {bad}, outside the cache's pages [0, {num_pages})")


def check_last_page_len(name: str, last: torch.Tensor, pages_per_request: list[int], page_size: int) -> None:
    values = last.tolist()
    for r, (n, pages) in enumerate(zip(values, pages_per_request, strict=True)):
        if pages > 0 and not 1 <= n <= page_size:
            raise InvalidArgument(f"{name}[{r}] = {n} must lie in [1, page_size = {page_size}]")
