"""Validated functional entry points of the kernels: attention (decode, prefill), merge states, and
appending to a paged KV cache.

`prepare_*` checks every argument once and builds the kernel's params struct; `launch` then only
re-points the tensors (after cheap metadata checks) and makes one foreign call on the current torch
stream: no allocation and no host sync, so launches can be captured in CUDA graphs.
"""

from __future__ import annotations

import math

import torch

from ..variants import Variant
from . import abi, loader
from .checks import (
    ALIGN_BYTES,
    InvalidArgument,
    check_index,
    check_indptr_values,
    check_last_page_len,
    check_page_ids,
    check_scalar,
    check_tensor,
    torch_dtype,
)

MAX_MERGE_HEAD_DIM = 256  # the merge kernel gives each lane at most two float4 slices of a row
MERGE_ALIGN_BYTES = 8  # the merge kernel stores 4 fp16/bf16 values at a time
KV_LAYOUTS = ("NHD", "HND")
_WORK_COLUMNS = abi.WORK_ITEM_FIELDS


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _kernel(variant: Variant, device: torch.device) -> loader.CompiledVariant:
    return loader.find_kernel(variant, _capability(device))


def kernel_info(variant: Variant, device=None) -> abi.KernelInfo:
    """Tile sizes, threads, shared memory and occupancy of `variant` on `device` (default: current)."""
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    with torch.cuda.device(device):
        return _kernel(variant, device).info


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _Spec:
    """What launch() holds a re-pointed tensor to: the prepared tensor's metadata (cheap to compare)."""

    __slots__ = ("shape", "stride", "dtype", "device_index", "align")

    def __init__(self, t: torch.Tensor, align: int):
        self.shape, self.stride, self.dtype = t.shape, t.stride(), t.dtype
        self.device_index, self.align = t.get_device(), align

    def matches(self, t) -> bool:
        return (
            isinstance(t, torch.Tensor)
            and t.shape == self.shape
            and t.dtype is self.dtype
            and t.stride() == self.stride
            and t.get_device() == self.device_index
            and (t.data_ptr() % self.align == 0 or t.numel() == 0)
        )

    def describe(self) -> str:
        return (
            f"shape {list(self.shape)}, strides {list(self.stride)}, {self.dtype}, cuda:{self.device_index}, "
            f"{self.align}-byte aligned"
        )


class _Prepared:
    """A kernel, its params struct, and the specs launch() holds new tensors to."""

    def _set_specs(self, tensors: dict, align: dict) -> None:
        self._specs = {name: None if t is None else _Spec(t, align[name]) for name, t in tensors.items()}

    def _reject(self, name: str, t) -> None:
        spec = self._specs[name]
        if spec is None or t is None:
            raise InvalidArgument(f"{name} must be {'None' if spec is None else 'given'}, as in prepare")
        got = f"shape {list(t.shape)}, strides {list(t.stride())}, {t.dtype}, {t.device}, at {t.data_ptr():x}"
        raise InvalidArgument(f"{name} differs from the tensor prepared with: {got} vs {spec.describe()}")

    def _run(self) -> None:
        self.kernel.run(self.params, torch.cuda.current_stream(self.device).cuda_stream)


class PreparedAttention(_Prepared):
    """Validated launch of one attention variant with a fixed params struct (built once)."""

    def __init__(self, kernel, params, device, tensors: dict, keep_alive: tuple):
        self.kernel, self.params, self.device = kernel, params, device
        self._set_specs(tensors, {name: ALIGN_BYTES if name != "lse" else 4 for name in tensors})
        self._keep_alive = keep_alive  # index arrays and workspaces the struct points into

    def launch(self, q, k, v, o, lse=None) -> None:
        specs = self._specs
        for name, t in (("q", q), ("k", k), ("v", v), ("o", o), ("lse", lse)):
            spec = specs[name]
            if (spec is None) != (t is None) or (spec is not None and not spec.matches(t)):
                self._reject(name, t)
        p = self.params
        p.q, p.k, p.v, p.o, p.lse = q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(), _ptr(lse)
        self._run()


def _kv_strides(k: torch.Tensor, paged: bool, layout: str) -> tuple[int, int, int, int, int]:
    """(stride_page, stride_n, stride_h, page_size, num_kv_heads) of the KV cache."""
    if not paged:
        return 0, k.stride(0), k.stride(1), 1, k.shape[1]
    if layout == "NHD":
        return k.stride(0), k.stride(1), k.stride(2), k.shape[1], k.shape[2]
    return k.stride(0), k.stride(2), k.stride(1), k.shape[2], k.shape[1]


def prepare_attention(
    variant: Variant,
    q,
    k,
    v,
    o,
    *,
    kv_indptr,
    kv_indices=None,
    kv_last_page_len=None,
    kv_layout: str = "NHD",
    qo_indptr=None,
    work,
    partial_o=None,
    partial_lse=None,
    lse=None,
    sm_scale: float | None = None,
    logits_soft_cap: float = 0.0,
    rope_scale: float = 1.0,
    rope_theta: float = 1e4,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    window_left: int = -1,
    alibi_slopes=None,
    custom_mask=None,
    mask_indptr=None,
    check_indices: bool = False,
    index_ready: bool = False,
    pages_ready: bool = False,
) -> PreparedAttention:
    """Checks every argument against `variant` and builds its params struct; see docs of api.h.

    q/o [total_q, Hq, D]; k/v paged [pages, page_size, Hkv, D] (NHD) or [pages, Hkv, page_size, D]
    (HND) with kv_indices, or ragged [total_kv, Hkv, D] without; work int32 [num_work, 6]. qo_indptr:
    prefill's [batch + 1] token offsets; for decode None (one query per request) or, with a variant
    without mask or positions, each request's first query token (stacked queries, api.h).
    index_ready (work, qo_indptr, kv_indptr, kv_last_page_len) and pages_ready (kv_indices) promise
    that those arrays are written before the kernel preceding each launch in the stream starts (by
    plan, say): on sm_90 the kernel then reads them while that kernel still runs (api.h,
    FIB_INDEX_READY)."""
    if not isinstance(variant, Variant) or variant.family not in ("decode", "prefill"):
        raise InvalidArgument(f"variant must be a decode or prefill Variant, got {variant!r}")
    if kv_layout not in KV_LAYOUTS:
        raise InvalidArgument(f"kv_layout must be one of {KV_LAYOUTS}, got {kv_layout!r}")
    q_dtype, kv_dtype, d = torch_dtype(variant.q_dtype), torch_dtype(variant.kv_dtype), variant.head_dim
    check_tensor("q", q, dtype=q_dtype, shape=(None, None, d), inner_contiguous=True, align_bytes=ALIGN_BYTES)
    device = q.device
    total_q, num_qo_heads = q.shape[0], q.shape[1]
    check_tensor(
        "o",
        o,
        dtype=q_dtype,
        device=device,
        shape=tuple(q.shape),
        inner_contiguous=True,
        align_bytes=ALIGN_BYTES,
    )
    paged = kv_indices is not None
    kv_shape = (None, None, None, d) if paged else (None, None, d)
    for name, t in (("k", k), ("v", v)):
        check_tensor(
            name,
            t,
            dtype=kv_dtype,
            device=device,
            shape=kv_shape,
            inner_contiguous=True,
            align_bytes=ALIGN_BYTES,
        )
    if k.shape != v.shape or k.stride() != v.stride():
        raise InvalidArgument(
            f"k and v must have the same shape and strides, got {list(k.shape)}/{list(k.stride())} and "
            f"{list(v.shape)}/{list(v.stride())}"
        )
    stride_page, stride_n, stride_h, page_size, num_kv_heads = _kv_strides(k, paged, kv_layout)
    if num_kv_heads == 0 or num_qo_heads % num_kv_heads:
        raise InvalidArgument(
            f"q's {num_qo_heads} heads must be a multiple of the KV cache's {num_kv_heads} heads "
            f"(layout {kv_layout})"
        )

    check_index("kv_indptr", kv_indptr, device=device)
    if kv_indptr.shape[0] < 1:
        raise InvalidArgument("kv_indptr must hold batch_size + 1 entries, got an empty tensor")
    batch_size = kv_indptr.shape[0] - 1
    if paged:
        check_index("kv_indices", kv_indices, device=device)
        if kv_last_page_len is None:
            raise InvalidArgument("kv_last_page_len is required with a paged KV cache (kv_indices given)")
        check_index("kv_last_page_len", kv_last_page_len, device=device, length=batch_size)
    elif kv_last_page_len is not None:
        raise InvalidArgument(
            "kv_last_page_len is only for a paged KV cache: pass kv_indices too, or leave it None"
        )
    if variant.family == "decode" and qo_indptr is None:
        if total_q != batch_size:
            raise InvalidArgument(
                f"decode: q has {total_q} rows but kv_indptr describes {batch_size} requests"
            )
    elif variant.family == "decode":
        # Stacked queries (api.h): every token sits at the end of the KV, which only variants without
        # a mask or positions leave right for several tokens of one request.
        if variant.mask != "none" or variant.pos != "none":
            raise InvalidArgument(
                f"{variant.id}: several query tokens per request (qo_indptr) need a decode variant without "
                "mask or positions; use a prefill variant"
            )
        check_index("qo_indptr", qo_indptr, device=device, length=batch_size + 1)
    else:
        if qo_indptr is None:
            raise InvalidArgument("prefill needs qo_indptr (int32, batch_size + 1 entries)")
        check_index("qo_indptr", qo_indptr, device=device, length=batch_size + 1)

    check_tensor("work", work, dtype=torch.int32, device=device, shape=(None, _WORK_COLUMNS), contiguous=True)
    if (partial_o is None) != (partial_lse is None):
        raise InvalidArgument("partial_o and partial_lse go together: pass both or neither")
    if partial_o is not None:
        check_tensor(
            "partial_o",
            partial_o,
            dtype=torch.float32,
            device=device,
            shape=(None, num_qo_heads, d),
            contiguous=True,
            align_bytes=ALIGN_BYTES,
        )
        check_tensor(
            "partial_lse",
            partial_lse,
            dtype=torch.float32,
            device=device,
            shape=(partial_o.shape[0], num_qo_heads),
            contiguous=True,
        )
    if lse is not None:
        check_tensor(
            "lse", lse, dtype=torch.float32, device=device, shape=(total_q, num_qo_heads), contiguous=True
        )

    sm_scale = 1.0 / math.sqrt(d) if sm_scale is None else check_scalar("sm_scale", sm_scale, positive=True)
    k_scale = check_scalar("k_scale", k_scale, positive=True)
    v_scale = check_scalar("v_scale", v_scale, positive=True)
    logits_soft_cap = check_scalar("logits_soft_cap", logits_soft_cap, minimum=0.0)
    if variant.soft_cap and logits_soft_cap <= 0:
        raise InvalidArgument(f"{variant.id} applies a soft-cap: logits_soft_cap must be > 0")
    if not variant.soft_cap and logits_soft_cap:
        raise InvalidArgument(
            f"logits_soft_cap={logits_soft_cap} but {variant.id} has no soft-cap: use a softcap variant"
        )
    if variant.pos == "rope":
        rope_scale = check_scalar("rope_scale", rope_scale, positive=True)
        rope_theta = check_scalar("rope_theta", rope_theta, positive=True)
    window_left = int(window_left)
    if variant.mask == "sliding_window" and window_left < 0:
        raise InvalidArgument(f"{variant.id} needs window_left >= 0, got {window_left}")
    if variant.mask != "sliding_window" and window_left != -1:
        raise InvalidArgument(
            f"window_left={window_left} but {variant.id} has no sliding window: leave it -1"
        )
    if variant.pos == "alibi":
        if alibi_slopes is None:
            raise InvalidArgument(f"{variant.id} needs alibi_slopes (float32, [{num_qo_heads}])")
        check_tensor(
            "alibi_slopes",
            alibi_slopes,
            dtype=torch.float32,
            device=device,
            shape=(num_qo_heads,),
            contiguous=True,
        )
    elif alibi_slopes is not None:
        raise InvalidArgument(f"alibi_slopes given but {variant.id} has no ALiBi: use an alibi variant")
    if variant.mask == "custom":
        if custom_mask is None or mask_indptr is None:
            raise InvalidArgument(f"{variant.id} needs custom_mask (uint8 bits) and mask_indptr (int64)")
        check_tensor(
            "custom_mask", custom_mask, dtype=torch.uint8, device=device, shape=(None,), contiguous=True
        )
        check_tensor(
            "mask_indptr",
            mask_indptr,
            dtype=torch.int64,
            device=device,
            shape=(batch_size + 1,),
            contiguous=True,
        )
    elif custom_mask is not None or mask_indptr is not None:
        raise InvalidArgument(f"custom_mask given but {variant.id} has no custom mask: use a custom variant")

    if check_indices:
        _check_index_values(
            k,
            paged,
            page_size,
            kv_indptr,
            kv_indices,
            kv_last_page_len,
            qo_indptr,
            total_q,
            work,
            partial_o,
            num_qo_heads // num_kv_heads,
            first_tokens=variant.family == "decode" and qo_indptr is not None,
        )

    kernel = _kernel(variant, device)
    p = abi.AttentionParams()
    p.q, p.q_stride_n, p.q_stride_h = q.data_ptr(), q.stride(0), q.stride(1)
    p.qo_indptr = _ptr(qo_indptr)
    p.k, p.v = k.data_ptr(), v.data_ptr()
    p.kv_stride_page, p.kv_stride_n, p.kv_stride_h = stride_page, stride_n, stride_h
    p.kv_indptr, p.kv_indices, p.kv_last_page_len = _ptr(kv_indptr), _ptr(kv_indices), _ptr(kv_last_page_len)
    p.page_size = page_size
    p.o, p.o_stride_n, p.o_stride_h, p.lse = o.data_ptr(), o.stride(0), o.stride(1), _ptr(lse)
    p.work, p.num_work = work.data_ptr(), work.shape[0]
    p.partial_o, p.partial_lse = _ptr(partial_o), _ptr(partial_lse)
    p.batch_size, p.num_qo_heads, p.num_kv_heads = batch_size, num_qo_heads, num_kv_heads
    p.sm_scale, p.logits_soft_cap = sm_scale, logits_soft_cap
    p.rope_scale, p.rope_theta = rope_scale, rope_theta
    p.k_scale, p.v_scale = k_scale, v_scale
    p.window_left = window_left
    p.alibi_slopes, p.custom_mask, p.mask_indptr = _ptr(alibi_slopes), _ptr(custom_mask), _ptr(mask_indptr)
    p.flags = (abi.INDEX_READY if index_ready else 0) | (abi.PAGES_READY if pages_ready else 0)
    keep = (
        kv_indptr,
        kv_indices,
        kv_last_page_len,
        qo_indptr,
        work,
        partial_o,
        partial_lse,
        alibi_slopes,
        custom_mask,
        mask_indptr,
    )
    return PreparedAttention(kernel, p, device, {"q": q, "k": k, "v": v, "o": o, "lse": lse}, keep)


def _check_index_values(
    k,
    paged,
    page_size,
    kv_indptr,
    kv_indices,
    kv_last_page_len,
    qo_indptr,
    total_q,
    work,
    partial_o,
    group,
    first_tokens=False,
) -> None:
    """Host-side checks of index values (synchronizes): monotone indptrs, page ids, work items in range.
    first_tokens: qo_indptr holds decode's first query token per request (api.h), not an indptr."""
    if paged:
        pages = check_indptr_values("kv_indptr", kv_indptr, total=kv_indices.shape[0])
        check_page_ids("kv_indices", kv_indices, k.shape[0], pages[-1])
        per_request = [b - a for a, b in zip(pages[:-1], pages[1:], strict=True)]
        check_last_page_len("kv_last_page_len", kv_last_page_len, per_request, page_size)
        lasts = kv_last_page_len.tolist()
        kv_lens = [(n - 1) * page_size + last if n else 0 for n, last in zip(per_request, lasts, strict=True)]
    else:
        rows = check_indptr_values("kv_indptr", kv_indptr, total=k.shape[0])
        kv_lens = [b - a for a, b in zip(rows[:-1], rows[1:], strict=True)]
    if first_tokens:
        # A request's queries run from its first token for as many tokens as its items' rows reach.
        starts = qo_indptr.tolist()
        q_lens = [max(total_q - t, 0) for t in starts]
        if any(t < 0 for t in starts):
            raise InvalidArgument(f"qo_indptr (first query tokens) must be >= 0, got {min(starts)}")
    elif qo_indptr is not None:
        qo = check_indptr_values("qo_indptr", qo_indptr, total=total_q)
        q_lens = [b - a for a, b in zip(qo[:-1], qo[1:], strict=True)]
    else:
        q_lens = [1] * len(kv_lens)
    partial_rows = 0 if partial_o is None else partial_o.shape[0]
    for i, (req, qb, qe, kb, ke, prow) in enumerate(work.tolist()):
        if req < 0:
            continue
        where = f"work[{i}] = {[req, qb, qe, kb, ke, prow]}"
        if req >= len(kv_lens):
            raise InvalidArgument(f"{where}: request {req} is not below the batch size {len(kv_lens)}")
        if not 0 <= qb <= qe <= q_lens[req] * group:
            raise InvalidArgument(f"{where}: query rows must lie in [0, {q_lens[req] * group}]")
        if not 0 <= kb <= ke <= kv_lens[req] and not (kb == ke == 0):
            raise InvalidArgument(f"{where}: keys must lie in [0, {kv_lens[req]}]")
        if prow >= 0 and prow + (qe - 1) // group - qb // group >= partial_rows:
            raise InvalidArgument(f"{where}: partial row past the {partial_rows} rows of partial_o")


def attention(variant: Variant, q, k, v, o, **kwargs) -> None:
    """prepare_attention(...).launch(q, k, v, o, lse) in one call."""
    prepare_attention(variant, q, k, v, o, **kwargs).launch(q, k, v, o, kwargs.get("lse"))


# Merge states.


class PreparedMerge(_Prepared):
    def __init__(self, kernel, params, device, o, lse, keep_alive: tuple):
        self.kernel, self.params, self.device = kernel, params, device
        self._set_specs({"o": o, "lse": lse}, {"o": MERGE_ALIGN_BYTES, "lse": 4})
        self._keep_alive = keep_alive

    def launch(self, o, lse=None) -> None:
        for name, t in (("o", o), ("lse", lse)):
            spec = self._specs[name]
            if (spec is None) != (t is None) or (spec is not None and not spec.matches(t)):
                self._reject(name, t)
        self.params.o, self.params.lse = o.data_ptr(), _ptr(lse)
        self._run()


def _merge_variant(o: torch.Tensor) -> Variant:
    q_dtype = {torch.bfloat16: "bf16", torch.float16: "fp16"}[o.dtype]
    return Variant(family="merge", arch="sm90a", q_dtype=q_dtype)


def prepare_merge(
    partial_o, partial_lse, merge_indptr, merge_indices, o, lse=None, *, index_ready: bool = False
) -> PreparedMerge:
    """Out row n = the log-sum-exp weighted combination of partial rows merge_indices[merge_indptr[n]:
    merge_indptr[n + 1]]. partial_o float32 [rows, H, D], partial_lse float32 [rows, H] (natural log),
    o [num_rows, H, D] fp16/bf16, lse float32 [num_rows, H] or None. Rows with no state are left as
    they are. index_ready: merge_indptr and merge_indices are written before the kernel preceding
    each launch starts (see prepare_attention)."""
    check_tensor(
        "partial_o",
        partial_o,
        dtype=torch.float32,
        shape=(None, None, None),
        contiguous=True,
        align_bytes=ALIGN_BYTES,
    )
    device = partial_o.device
    rows, heads, d = partial_o.shape
    if d % 4 or not 0 < d <= MAX_MERGE_HEAD_DIM:
        raise InvalidArgument(
            f"partial_o's head dim must be a multiple of 4 in [4, {MAX_MERGE_HEAD_DIM}], got {d}"
        )
    check_tensor(
        "partial_lse", partial_lse, dtype=torch.float32, device=device, shape=(rows, heads), contiguous=True
    )
    check_index("merge_indptr", merge_indptr, device=device)
    if merge_indptr.shape[0] < 1:
        raise InvalidArgument("merge_indptr must hold num_rows + 1 entries, got an empty tensor")
    num_rows = merge_indptr.shape[0] - 1
    check_index("merge_indices", merge_indices, device=device)
    check_tensor(
        "o",
        o,
        dtype=(torch.bfloat16, torch.float16),
        device=device,
        shape=(num_rows, heads, d),
        inner_contiguous=True,
        align_bytes=MERGE_ALIGN_BYTES,
    )
    if lse is not None:
        check_tensor("lse", lse, dtype=torch.float32, device=device, shape=(num_rows, heads), contiguous=True)
    kernel = _kernel(_merge_variant(o), device)
    p = abi.MergeParams()
    p.partial_o, p.partial_lse = partial_o.data_ptr(), partial_lse.data_ptr()
    p.merge_indptr, p.merge_indices = merge_indptr.data_ptr(), merge_indices.data_ptr()
    p.o, p.o_stride_n, p.o_stride_h, p.lse = o.data_ptr(), o.stride(0), o.stride(1), _ptr(lse)
    p.num_rows, p.num_heads, p.head_dim = num_rows, heads, d
    p.flags = abi.INDEX_READY if index_ready else 0
    return PreparedMerge(kernel, p, device, o, lse, (partial_o, partial_lse, merge_indptr, merge_indices))


def merge_states(partial_o, partial_lse, merge_indptr, merge_indices, o, lse=None) -> None:
    prepare_merge(partial_o, partial_lse, merge_indptr, merge_indices, o, lse).launch(o, lse)


def merge_state_list(v, s) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges k attention states per row: v [n, k, H, D] (fp16/bf16), s [n, k, H] (float32 lse, natural
    log) -> (v_merged [n, H, D] in v's dtype, s_merged [n, H] float32)."""
    check_tensor("v", v, dtype=(torch.bfloat16, torch.float16), shape=(None, None, None, None))
    n, k, heads, d = v.shape
    check_tensor("s", s, dtype=torch.float32, device=v.device, shape=(n, k, heads))
    partial_o = v.reshape(n * k, heads, d).float().contiguous()
    partial_lse = s.reshape(n * k, heads).contiguous()
    indptr = torch.arange(0, n * k + 1, k, dtype=torch.int32, device=v.device)
    indices = torch.arange(n * k, dtype=torch.int32, device=v.device)
    o = torch.empty(n, heads, d, dtype=v.dtype, device=v.device)
    lse = torch.empty(n, heads, dtype=torch.float32, device=v.device)
    if n:
        merge_states(partial_o, partial_lse, indptr, indices, o, lse)
    return o, lse


def merge_state(v_a, s_a, v_b, s_b) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges two attention states: v [n, H, D] (fp16/bf16) with s [n, H] (float32 lse, natural log)."""
    check_tensor("v_a", v_a, dtype=(torch.bfloat16, torch.float16), shape=(None, None, None))
    check_tensor("v_b", v_b, dtype=v_a.dtype, device=v_a.device, shape=tuple(v_a.shape))
    for name, s in (("s_a", s_a), ("s_b", s_b)):
        check_tensor(name, s, dtype=torch.float32, device=v_a.device, shape=tuple(v_a.shape[:2]))
    return merge_state_list(torch.stack([v_a, v_b], 1), torch.stack([s_a, s_b], 1))


# Appending to the paged KV cache.


def append_paged_kv_cache(
    k_new, v_new, batch_indices, positions, k_cache, v_cache, kv_indices, kv_indptr, kv_layout: str = "NHD"
) -> None:
    """Writes k_new/v_new [nnz, Hkv, D] as token positions[i] of request batch_indices[i] into its page
    (kv_indices[kv_indptr[request] + position // page_size], slot position % page_size). Device-side
    torch indexing: no host sync. Values are cast to the cache's dtype (fp8 caches: unscaled)."""
    if kv_layout not in KV_LAYOUTS:
        raise InvalidArgument(f"kv_layout must be one of {KV_LAYOUTS}, got {kv_layout!r}")
    check_tensor("k_cache", k_cache, shape=(None, None, None, None))
    device = k_cache.device
    check_tensor("v_cache", v_cache, dtype=k_cache.dtype, device=device, shape=tuple(k_cache.shape))
    page_size, heads = (
        (k_cache.shape[1], k_cache.shape[2]) if kv_layout == "NHD" else (k_cache.shape[2], k_cache.shape[1])
    )
    d = k_cache.shape[3]
    check_tensor("k_new", k_new, device=device, shape=(None, heads, d))
    check_tensor("v_new", v_new, dtype=k_new.dtype, device=device, shape=tuple(k_new.shape))
    nnz = k_new.shape[0]
    check_index("batch_indices", batch_indices, device=device, length=nnz)
    check_index("positions", positions, device=device, length=nnz)
    check_index("kv_indices", kv_indices, device=device)
    check_index("kv_indptr", kv_indptr, device=device)
    if nnz == 0:
        return
    page = kv_indices[
        (kv_indptr[batch_indices] + torch.div(positions, page_size, rounding_mode="floor")).long()
    ].long()
    slot = torch.remainder(positions, page_size).long()
    for cache, new in ((k_cache, k_new), (v_cache, v_new)):
        if kv_layout == "NHD":
            cache[page, slot] = new.to(cache.dtype)
        else:
            cache[page, :, slot] = new.to(cache.dtype)
