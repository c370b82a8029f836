"""The host planner in C++ (kernels/csrc/plan/planner.cpp), through ctypes: a decode or prefill batch's
validation, plan and staging (and, in packs, its upload) in one foreign call.

kernels/scheduler.py stays the specification (tests/unit/test_plan_native.py checks both write the same
bytes); this module only turns its configuration into the C struct once per workspace layout, calls
the planner, raises the Python planner's errors with its messages, and rebuilds a scheduler.Plan from
the staging buffer when someone asks for it (plan_info).
"""

from __future__ import annotations

import ctypes
import functools
from typing import NamedTuple

import numpy as np

from . import abi, scheduler

_MASKS = {"none": 0, "custom": 0, "causal": 1, "sliding_window": 2}  # plan_api.h fib_plan_config.mask
_ARGS = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 2


class Planner(NamedTuple):
    """A pack's planner: `plan` (fib_plan_decode), `prefill` (fib_plan_prefill) and, where the pack has
    them, the `upload` and `prefill_upload` entry points (plan and upload in one call)."""

    plan: ctypes._CFuncPtr
    prefill: ctypes._CFuncPtr | None = None
    upload: ctypes._CFuncPtr | None = None
    prefill_upload: ctypes._CFuncPtr | None = None


def bind(function) -> ctypes._CFuncPtr:
    """Declare fib_plan_decode's C signature on a ctypes function of a loaded library."""
    function.argtypes, function.restype = _ARGS, ctypes.c_int
    return function


def bind_prefill(function, upload: bool = False) -> ctypes._CFuncPtr:
    """Declare fib_plan_prefill's C signature (fib_plan_decode's with qo_indptr first), or with `upload`
    fib_plan_prefill_upload's."""
    function.argtypes = [ctypes.c_void_p] + _ARGS + [ctypes.c_void_p] * (3 if upload else 0)
    function.restype = ctypes.c_int
    return function


def bind_upload(function) -> ctypes._CFuncPtr:
    """Declare fib_plan_decode_upload's C signature (fib_plan_decode's, then workspace, stream, event)."""
    function.argtypes, function.restype = _ARGS + [ctypes.c_void_p] * 3, ctypes.c_int
    return function


def eligible(
    variant, kernel: scheduler.KernelShape, num_qo_heads, num_kv_heads, page_size, cost, *, decode
) -> bool:
    """Whether the C planner covers this problem: no custom mask (uploaded apart), a valid page size, a
    cost model within the C struct and, for decode, one tile per request (the query heads of a KV head
    fit one CTA). Else the Python planner runs."""
    return (
        variant.mask != "custom"
        and num_kv_heads >= 1
        and num_qo_heads % num_kv_heads == 0
        and (not decode or num_qo_heads // num_kv_heads <= kernel.cta_tile_q)
        and page_size >= 1
        and len(cost.split_factors) <= abi.PLAN_MAX_FACTORS
    )


def planner_of(pack) -> Planner | None:
    """The planner a kernel pack's manifest names (loader.KernelPack.planner), or None."""
    plan, prefill = pack.planner("decode"), pack.planner("prefill")
    if plan is None or prefill is None:
        return None
    upload, prefill_upload = pack.planner("decode_upload"), pack.planner("prefill_upload")
    return Planner(
        bind(plan),
        bind_prefill(prefill),
        upload and bind_upload(upload),
        prefill_upload and bind_prefill(prefill_upload, upload=True),
    )


def config(
    lay: scheduler.WorkspaceLayout,
    kernel: scheduler.KernelShape,
    *,
    num_qo_heads: int,
    num_kv_heads: int,
    page_size: int,
    window_left: int,
    split_kv: bool,
    fixed_grid: bool,
    kv_bytes: int,
    cost: scheduler.CostModel,
    mask: str = "none",
) -> abi.PlanConfig:
    """The C planner's view of one problem and workspace layout (the same for every batch planned in it)."""
    cap = lay.capacity
    slots = scheduler._metadata_slots(lay)
    factors = (ctypes.c_double * abi.PLAN_MAX_FACTORS)(*cost.split_factors)
    return abi.PlanConfig(
        num_qo_heads=num_qo_heads,
        num_kv_heads=num_kv_heads,
        page_size=page_size,
        window_left=window_left,
        split_kv=int(split_kv),
        fixed_grid=int(fixed_grid),
        kv_bytes=kv_bytes,
        num_sms=kernel.num_sms,
        ctas_per_sm=kernel.ctas_per_sm,
        cta_tile_q=kernel.cta_tile_q,
        cta_tile_kv=kernel.cta_tile_kv,
        cap_batch=cap.batch,
        cap_tokens=cap.tokens,
        cap_work_items=cap.work_items,
        cap_partial_rows=cap.partial_rows,
        cap_pages=cap.pages,
        **{f"at_{name}": slots[name][0] for name in abi.PLAN_SLOTS},
        item_overhead=cost.item_overhead,
        solo_speedup=cost.solo_speedup,
        wave_fill=cost.wave_fill,
        merge_launch=cost.merge_launch,
        partial_bytes_per_key_byte=cost.partial_bytes_per_key_byte,
        min_gain=cost.min_gain,
        num_split_factors=len(cost.split_factors),
        mask=_MASKS[mask],
        split_factors=factors,
    )


def error(result: abi.PlanResult) -> Exception:
    """The exception the Python planner (scheduler.plan, scheduler.pack_metadata) raises for the input
    the C planner refused with result.error; the index arrays' errors are wrapper_engine.native_error's."""
    code, (a, b, c) = result.error, tuple(result.values)
    if code == abi.PLAN_BATCH_OVER:
        return scheduler.batch_over_capacity(a, b)
    if code == abi.PLAN_TOKENS_OVER:
        return scheduler.tokens_over_capacity(a, b)
    if code == abi.PLAN_ITEMS_OVER:
        return scheduler.items_over_capacity(a, b)
    if code == abi.PLAN_SLOT_OVER:
        return scheduler.slot_overflow(abi.PLAN_SLOTS[a], b, c)
    if code == abi.PLAN_CUDA:
        from .loader import KernelLaunchError, describe_cuda_error

        return KernelLaunchError(f"uploading the plan: {describe_cuda_error(a)}")
    return RuntimeError(f"the C planner refused its input (error {code}): a flashinfer-build bug")


class NativePlan:
    """A plan the C planner wrote into the staging buffer: its counts, and the scheduler.Plan rebuilt from
    the staging buffer on request (valid until the next plan rewrites that buffer)."""

    __slots__ = (
        "num_items",
        "grid",
        "merge_indptr_len",
        "num_partial_rows",
        "split",
        "_result",
        "_staging",
        "_cfg",
    )

    def __init__(self, result: abi.PlanResult, staging: np.ndarray, cfg: abi.PlanConfig):
        self.num_items, self.grid = result.num_items, result.grid
        self.merge_indptr_len, self.num_partial_rows = result.merge_indptr_len, result.num_partial_rows
        self.split = result.chunk_size > 0
        self._result, self._staging, self._cfg = result, staging, cfg

    def to_plan(self) -> scheduler.Plan:
        r, host, cfg = self._result, self._staging, self._cfg
        work = host[cfg.at_work : cfg.at_work + self.grid * abi.WORK_ITEM_FIELDS].reshape(
            self.grid, abi.WORK_ITEM_FIELDS
        )
        n = r.num_candidates
        return scheduler.Plan(
            work=work.copy(),
            num_items=self.num_items,
            merge_indptr=host[cfg.at_merge_indptr :][: self.merge_indptr_len].copy(),
            merge_indices=host[cfg.at_merge_indices :][: r.num_merge_entries].copy(),
            num_partial_rows=self.num_partial_rows,
            chunk_size=r.chunk_size,
            num_tokens=r.num_tokens,
            estimate=scheduler.Estimate(
                r.unsplit, r.chosen, tuple(zip(r.candidate_sizes[:n], r.candidate_times[:n], strict=True))
            ),
        )


@functools.cache
def host_library(path: str) -> Planner:
    """The planner of a host-only build of it at `path` (wheelbuild.planner.build_host_library): no
    upload entry point, the engine uploads through torch."""
    lib = ctypes.CDLL(path)
    return Planner(bind(lib.fib_plan_decode), bind_prefill(lib.fib_plan_prefill))
