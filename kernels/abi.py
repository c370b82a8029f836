"""ctypes mirror of kernels/csrc/api.h: one Structure per C struct, field for field.

tests/unit/test_abi.py compiles api.h with the host C compiler and checks every size and offset here
against it, so the two cannot drift apart silently.
"""

from __future__ import annotations

import ctypes as C

ABI_VERSION = 2
# Launch flags (api.h): inputs in place before the previous kernel in the stream started, which an
# sm_90 kernel then reads before waiting for that kernel.
INDEX_READY = 1  # work, qo_indptr, kv_indptr, kv_last_page_len; merge_indptr, merge_indices
PAGES_READY = 2  # kv_indices

_p = C.c_void_p
_i32p = C.POINTER(C.c_int32)
_f32p = C.POINTER(C.c_float)


class WorkItem(C.Structure):
    _fields_ = [
        ("request", C.c_int32),
        ("qo_begin", C.c_int32),
        ("qo_end", C.c_int32),
        ("kv_begin", C.c_int32),
        ("kv_end", C.c_int32),
        ("partial_row", C.c_int32),
    ]


WORK_ITEM_FIELDS = len(WorkItem._fields_)  # int32 columns of a work list tensor [n, WORK_ITEM_FIELDS]


class AttentionParams(C.Structure):
    _fields_ = [
        ("q", _p),
        ("q_stride_n", C.c_int64),
        ("q_stride_h", C.c_int64),
        ("qo_indptr", _p),
        ("k", _p),
        ("v", _p),
        ("kv_stride_page", C.c_int64),
        ("kv_stride_n", C.c_int64),
        ("kv_stride_h", C.c_int64),
        ("kv_indptr", _p),
        ("kv_indices", _p),
        ("kv_last_page_len", _p),
        ("page_size", C.c_int32),
        ("o", _p),
        ("o_stride_n", C.c_int64),
        ("o_stride_h", C.c_int64),
        ("lse", _p),
        ("work", _p),
        ("num_work", C.c_int32),
        ("partial_o", _p),
        ("partial_lse", _p),
        ("batch_size", C.c_int32),
        ("num_qo_heads", C.c_int32),
        ("num_kv_heads", C.c_int32),
        ("sm_scale", C.c_float),
        ("logits_soft_cap", C.c_float),
        ("rope_scale", C.c_float),
        ("rope_theta", C.c_float),
        ("k_scale", C.c_float),
        ("v_scale", C.c_float),
        ("window_left", C.c_int32),
        ("alibi_slopes", _p),
        ("custom_mask", _p),
        ("mask_indptr", _p),
        ("flags", C.c_int32),
    ]


class MergeParams(C.Structure):
    _fields_ = [
        ("partial_o", _p),
        ("partial_lse", _p),
        ("merge_indptr", _p),
        ("merge_indices", _p),
        ("o", _p),
        ("o_stride_n", C.c_int64),
        ("o_stride_h", C.c_int64),
        ("lse", _p),
        ("num_rows", C.c_int32),
        ("num_heads", C.c_int32),
        ("head_dim", C.c_int32),
        ("flags", C.c_int32),
    ]


class KernelInfo(C.Structure):
    _fields_ = [
        ("abi_version", C.c_int32),
        ("cta_tile_q", C.c_int32),
        ("cta_tile_kv", C.c_int32),
        ("num_threads", C.c_int32),
        ("smem_bytes", C.c_int32),
        ("ctas_per_sm", C.c_int32),
    ]

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name, _ in self._fields_}


PARAMS_FOR_FAMILY = {"decode": AttentionParams, "prefill": AttentionParams, "merge": MergeParams}


# ---- the host planner: kernels/csrc/plan/plan_api.h (not part of ABI_VERSION: a pack without the planner
# ---- still loads, and its plans come from the Python planner) ----------------------------------------

PLAN_MAX_FACTORS = 8
(
    PLAN_OK,
    PLAN_INDPTR_START,
    PLAN_INDPTR_DECREASES,
    PLAN_INDPTR_EXCEEDS,
    PLAN_LAST_PAGE_LEN,
    PLAN_BATCH_OVER,
    PLAN_TOKENS_OVER,
    PLAN_ITEMS_OVER,
    PLAN_SLOT_OVER,
    PLAN_BAD_CONFIG,
    PLAN_CUDA,
    PLAN_QO_INDPTR,
) = range(12)


# The staging buffer's slots, in plan_api.h's order: PlanConfig.at_<slot> is each one's offset, and
# PLAN_SLOT_OVER errors name the slot by its index here.
PLAN_SLOTS = (
    "work",
    "merge_indptr",
    "merge_indices",
    "kv_indptr",
    "kv_last_page_len",
    "kv_indices",
    "qo_indptr",
)


class PlanConfig(C.Structure):
    _fields_ = [
        *((name, C.c_int32) for name in ("num_qo_heads", "num_kv_heads", "page_size", "window_left")),
        *((name, C.c_int32) for name in ("split_kv", "fixed_grid", "kv_bytes")),
        *((name, C.c_int32) for name in ("num_sms", "ctas_per_sm", "cta_tile_q", "cta_tile_kv")),
        *(
            (name, C.c_int32)
            for name in ("cap_batch", "cap_tokens", "cap_work_items", "cap_partial_rows", "cap_pages")
        ),
        *((f"at_{name}", C.c_int32) for name in PLAN_SLOTS),
        *(
            (name, C.c_double)
            for name in (
                "item_overhead",
                "solo_speedup",
                "wave_fill",
                "merge_launch",
                "partial_bytes_per_key_byte",
                "min_gain",
            )
        ),
        ("num_split_factors", C.c_int32),
        ("mask", C.c_int32),
        ("split_factors", C.c_double * PLAN_MAX_FACTORS),
    ]


class PlanResult(C.Structure):
    _fields_ = [
        *(
            (name, C.c_int32)
            for name in (
                "error",
                "num_items",
                "grid",
                "merge_indptr_len",
                "num_partial_rows",
                "chunk_size",
                "num_candidates",
                "num_tokens",
                "num_merge_entries",
                "reserved",
            )
        ),
        ("values", C.c_int64 * 3),
        ("kv_used", C.c_int64),
        ("upload_bytes", C.c_int64),
        ("unsplit", C.c_double),
        ("chosen", C.c_double),
        ("candidate_sizes", C.c_int64 * PLAN_MAX_FACTORS),
        ("candidate_times", C.c_double * PLAN_MAX_FACTORS),
    ]
