"""The plan/run machinery behind the wrappers (kernels/wrappers.py, kernels/cascade.py): host index
arrays in, the scheduler's plan packed into a pinned staging buffer and uploaded into the caller's
workspace with one asynchronous copy, and the kernels' prepared launches.

Plan runs for every batch, so its host time counts: what does not change between batches (the
variant, the workspace layout of a size, the checks of the variant's scalars) is cached, and the
tensor views and kernel params are built on the first run after a plan (ops.prepare_attention
validates every argument there), then reused by every later run with the same tensor geometry.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import torch

from ..variants import Variant
from . import abi, loader, native_plan, ops, scheduler
from .checks import InvalidArgument, check_scalar

DTYPE_NAMES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float8_e4m3fn: "fp8e4m3",
    torch.float8_e5m2: "fp8e5m2",
}
KV_BYTES = {"bf16": 2, "fp16": 2, "fp8e4m3": 1, "fp8e5m2": 1}


def dtype_name(name: str, dtype) -> str:
    if isinstance(dtype, str) and dtype in KV_BYTES:
        return dtype
    if dtype in DTYPE_NAMES:
        return DTYPE_NAMES[dtype]
    raise InvalidArgument(f"{name} must be one of {', '.join(KV_BYTES)} (or the torch dtype), got {dtype!r}")


@functools.lru_cache(maxsize=256)
def variant_for(family, q_dtype, kv_dtype, head_dim, mask, pos, logits_soft_cap) -> Variant:
    q_name = dtype_name("q_dtype", q_dtype)
    kv_name = q_name if kv_dtype is None else dtype_name("kv_dtype", kv_dtype)
    return Variant(
        family=family,
        arch="sm90a",
        q_dtype=q_name,
        kv_dtype=kv_name,
        head_dim=head_dim,
        mask=mask,
        pos=pos,
        soft_cap=bool(logits_soft_cap),
    )


@functools.cache
def kernel_shape(variant: Variant, device_index: int) -> scheduler.KernelShape:
    info = ops.kernel_info(variant, torch.device("cuda", device_index))
    if info.ctas_per_sm < 1:
        raise InvalidArgument(
            f"{variant.id} cannot run on this GPU (its shared memory or registers do not fit)"
        )
    num_sms = torch.cuda.get_device_properties(device_index).multi_processor_count
    return scheduler.KernelShape(num_sms, info.ctas_per_sm, info.cta_tile_q, info.cta_tile_kv)


@functools.lru_cache(maxsize=64)
def _layout(batch, tokens, group, cta_tile_q, num_sms, decode, pages, num_qo_heads, head_dim):
    cap = scheduler.capacity(
        max_batch=batch,
        max_tokens=tokens,
        group=group,
        cta_tile_q=cta_tile_q,
        num_sms=num_sms,
        decode=decode,
        max_pages=pages,
    )
    return scheduler.layout(cap, num_qo_heads, head_dim)


def make_knobs(
    sm_scale, logits_soft_cap, rope_scale, rope_theta, k_scale, v_scale, window_left, alibi_slopes
) -> dict:
    return {
        "sm_scale": sm_scale,
        "logits_soft_cap": float(logits_soft_cap or 0.0),
        "rope_scale": rope_scale,
        "rope_theta": rope_theta,
        "k_scale": k_scale,
        "v_scale": v_scale,
        "window_left": int(window_left),
        "alibi_slopes": alibi_slopes,
    }


@functools.lru_cache(maxsize=256)
def _check_scalars(
    variant: Variant, sm_scale, logits_soft_cap, rope_scale, rope_theta, k_scale, v_scale, window_left
) -> None:
    if sm_scale is not None:
        check_scalar("sm_scale", sm_scale, positive=True)
    for name, value in (
        ("k_scale", k_scale),
        ("v_scale", v_scale),
        ("rope_scale", rope_scale),
        ("rope_theta", rope_theta),
    ):
        check_scalar(name, value, positive=True)
    if variant.soft_cap:
        check_scalar("logits_soft_cap", logits_soft_cap, positive=True)
    if (variant.mask == "sliding_window") != (window_left >= 0):
        raise InvalidArgument(
            f"window_left={window_left} with mask={variant.mask!r}: a sliding window needs window_left >= 0, "
            "other masks leave it -1"
        )


def check_knobs(variant: Variant, kn: dict, num_qo_heads: int) -> None:
    """Plan-time checks of the variant's scalars (ops.prepare_attention repeats them with the tensors)."""
    _check_scalars(variant, *_knob_values(kn))
    slopes = kn["alibi_slopes"]
    if (variant.pos == "alibi") != (slopes is not None):
        raise InvalidArgument("alibi_slopes go with pos='alibi' and only with it")
    if slopes is not None and len(slopes) != num_qo_heads:
        raise InvalidArgument(
            f"alibi_slopes must have num_qo_heads = {num_qo_heads} entries, got {len(slopes)}"
        )


def check_heads(num_qo_heads, num_kv_heads) -> None:
    if num_kv_heads < 1 or num_qo_heads < 1 or num_qo_heads % num_kv_heads:
        raise InvalidArgument(
            f"num_qo_heads {num_qo_heads} must be a positive multiple of num_kv_heads {num_kv_heads}"
        )


def host_index(name: str, values, *, length: int | None = None) -> np.ndarray:
    """An index array as host int32 numpy (a CUDA tensor is copied, which waits for the device)."""
    if isinstance(values, torch.Tensor):
        if values.dtype not in (torch.int32, torch.int64):
            raise InvalidArgument(f"{name} must hold int32 values, got {values.dtype}")
        values = values.cpu().numpy() if values.is_cuda else values.numpy()
        if values.ndim == 1 and values.dtype == np.int32 and length in (None, values.shape[0]):
            return values  # the common case, without the generic checks and conversion below
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise InvalidArgument(
            f"{name} must be a 1-D array of integers, got shape {array.shape} of {array.dtype}"
        )
    if length is not None and array.shape[0] != length:
        raise InvalidArgument(f"{name} must have {length} entries, got {array.shape[0]}")
    return array.astype(np.int32, copy=False)


def check_indptr(
    name: str, indptr: np.ndarray, total: int | None = None, diff: np.ndarray | None = None
) -> None:
    """Starts at 0, never decreases (diff: indptr[1:] - indptr[:-1] when the caller has it), ends within
    the `total` entries it indexes."""
    if indptr.shape[0] < 1 or indptr[0] != 0:
        raise _indptr_start(name)
    if diff is None:
        diff = indptr[1:] - indptr[:-1]
    if indptr.shape[0] > 1 and (diff < 0).any():
        raise _indptr_decreases(name)
    if total is not None and indptr[-1] > total:
        raise _indptr_exceeds(name, indptr[-1], total)


# The index arrays' errors, raised by the checks here and for the C planner's error codes (native_error).
def _indptr_start(name: str) -> InvalidArgument:
    return InvalidArgument(f"{name} must start at 0 and hold batch_size + 1 entries")


def _indptr_decreases(name: str) -> InvalidArgument:
    return InvalidArgument(f"{name} must be non-decreasing")


def _indptr_exceeds(name: str, end: int, total: int) -> InvalidArgument:
    return InvalidArgument(f"{name}[-1] = {end} exceeds the {total} entries it indexes")


def _last_page_len_invalid(page_size: int) -> InvalidArgument:
    return InvalidArgument(f"kv_last_page_len must lie in [1, page_size = {page_size}]")


def native_error(result: abi.PlanResult) -> Exception:
    """The exception the Python path (paged_lengths, scheduler.plan, scheduler.pack_metadata) raises for
    the input the C planner refused with result.error."""
    code, (a, b) = result.error, tuple(result.values)[:2]
    if code == abi.PLAN_INDPTR_START:
        return _indptr_start("kv_indptr")
    if code == abi.PLAN_INDPTR_DECREASES:
        return _indptr_decreases("kv_indptr")
    if code == abi.PLAN_INDPTR_EXCEEDS:
        return _indptr_exceeds("kv_indptr", a, b)
    if code == abi.PLAN_LAST_PAGE_LEN:
        return _last_page_len_invalid(a)
    return native_plan.error(result)


def paged_lengths(kv_ptr: np.ndarray, last: np.ndarray, page_size: int, num_indices: int) -> np.ndarray:
    """Tokens per request (int64) of a paged cache, checking kv_indptr (as check_indptr does) and
    kv_last_page_len (in [1, page_size] where a request has pages) in one pass of few numpy calls."""
    if kv_ptr.shape[0] < 1 or kv_ptr[0] != 0:
        raise _indptr_start("kv_indptr")
    pages = kv_ptr[1:] - kv_ptr[:-1]
    if not pages.shape[0]:
        return np.zeros(0, np.int64)
    if pages.min() < 0:
        raise _indptr_decreases("kv_indptr")
    if kv_ptr[-1] > num_indices:
        raise _indptr_exceeds("kv_indptr", kv_ptr[-1], num_indices)
    lengths = np.multiply(pages, page_size, dtype=np.int64)  # one call: widen and scale
    lengths += last
    lengths -= page_size  # (pages - 1) * page_size + last
    if (last - 1).view(np.uint32).max() < page_size:  # every last page valid: empty requests give <= 0
        return np.maximum(lengths, 0, out=lengths)
    has_pages = pages > 0
    if ((last - 1).view(np.uint32) >= page_size)[has_pages].any():
        raise _last_page_len_invalid(page_size)
    return np.where(has_pages, lengths, 0)


def split_cache(cache):
    if isinstance(cache, (tuple, list)) and len(cache) == 2:
        return cache[0], cache[1]
    raise InvalidArgument("the paged KV cache must be a (k_cache, v_cache) pair")


def signature(t: torch.Tensor | None):
    return None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.device)


def _pad(values: np.ndarray, length: int) -> np.ndarray:
    """Graph mode: index arrays padded to the bound with empty requests."""
    if values.shape[0] >= length:
        return values
    fill = values[-1] if values.shape[0] else 0
    return np.concatenate([values, np.full(length - values.shape[0], fill, np.int32)])


def check_workspace(workspace) -> None:
    if not isinstance(workspace, torch.Tensor) or workspace.dtype != torch.uint8 or not workspace.is_cuda:
        raise InvalidArgument("workspace must be a uint8 CUDA tensor (see workspace_size)")


class Staging:
    """The pinned host buffer plans are written into, and the event of its last upload: the buffer is
    reused, so a new plan first waits for the previous upload (long finished in practice)."""

    pinned = True

    def __init__(self) -> None:
        self._allocate(0)
        self.uploaded: torch.cuda.Event | None = None

    def _allocate(self, entries: int) -> None:
        self.host = torch.empty(entries, dtype=torch.int32, pin_memory=self.pinned and entries > 0)
        self.array = self.host.numpy()
        self.bytes = self.host.view(torch.uint8)
        self.ptr = self.host.data_ptr()  # for the C planner
        # (workspace, staging) slices of each upload size: slicing a tensor costs ~1 us per call, and a
        # workspace layout always uploads the same size
        self.slices: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def reserve(self, nbytes: int) -> np.ndarray:
        if self.uploaded is not None and not self.uploaded.query():
            self.uploaded.synchronize()
        return self.grow(nbytes)

    def grow(self, nbytes: int) -> np.ndarray:
        """A buffer of at least nbytes (the caller has waited for the last upload, or leaves that wait
        to the C planner: then a buffer that must grow is first waited for here)."""
        if self.host.numel() * 4 < nbytes:
            if self.uploaded is not None:
                self.uploaded.synchronize()
            self._allocate(max(nbytes // 4, 2 * self.host.numel()))
        return self.array

    def event(self) -> int:
        """The raw handle of the upload event, for the C planner's upload (recorded once, so that it exists
        and the first wait returns at once)."""
        if self.uploaded is None:
            self.uploaded = torch.cuda.Event()
            self.uploaded.record()
        return self.uploaded.cuda_event

    def upload(self, workspace: torch.Tensor, nbytes: int) -> None:
        pair = self.slices.get(nbytes)
        if pair is None:
            if len(self.slices) >= 64:
                self.slices.clear()
            pair = self.slices[nbytes] = (workspace[:nbytes], self.bytes[:nbytes])
        pair[0].copy_(pair[1], non_blocking=True)
        if self.uploaded is None:
            self.uploaded = torch.cuda.Event()
        self.uploaded.record()


class Engine:
    """Plan state of one batch wrapper: the current plan, its workspace layout, the prepared launches."""

    def __init__(
        self,
        workspace,
        kv_layout,
        *,
        family,
        paged,
        use_cuda_graph,
        max_batch_size,
        max_num_tokens,
        max_num_pages,
    ):
        check_workspace(workspace)
        if not workspace.is_contiguous() or workspace.dim() != 1:
            raise InvalidArgument("workspace must be a contiguous 1-D tensor")
        if workspace.data_ptr() % scheduler.ALIGN_BYTES:
            raise InvalidArgument(f"workspace must be {scheduler.ALIGN_BYTES}-byte aligned")
        if kv_layout not in ops.KV_LAYOUTS:
            raise InvalidArgument(f"kv_layout must be one of {ops.KV_LAYOUTS}, got {kv_layout!r}")
        self.workspace, self.kv_layout, self.family, self.paged = workspace, kv_layout, family, paged
        self.graph = bool(use_cuda_graph)
        if self.graph:
            needed = {"max_batch_size": max_batch_size}
            if family == "prefill":
                needed["max_num_tokens"] = max_num_tokens
            if paged:
                needed["max_num_pages"] = max_num_pages
            missing = [name for name, value in needed.items() if not value or value < 1]
            if missing:
                raise InvalidArgument(f"use_cuda_graph=True needs upper bounds: {', '.join(missing)} (>= 1)")
        self.max_batch = max_batch_size
        self.max_tokens = max_batch_size if family == "decode" else max_num_tokens
        self.max_pages = max_num_pages or 0
        self.staging = Staging()
        self.fixed: tuple | None = None  # graph mode: (problem key, layout) of the first plan
        self.native: tuple | None = None  # (problem key, _NativeDecode or None) of the last decode plan
        self.plan_: scheduler.Plan | native_plan.NativePlan | None = None
        self.prepared: dict = {}
        self.views: dict | None = None
        self.device_index = workspace.device.index if workspace.device.index is not None else 0
        self.device_type, self.workspace_bytes = workspace.device.type, workspace.numel()
        self.workspace_ptr = workspace.data_ptr()

    def plan(
        self,
        qo_indptr,
        kv_indptr,
        kv_indices,
        kv_last_page_len,
        *,
        variant,
        num_qo_heads,
        num_kv_heads,
        page_size,
        split_kv,
        knobs,
        custom_mask=None,
    ):
        decode = self.family == "decode"
        if knobs["alibi_slopes"] is None and custom_mask is None and (self.paged or not decode):
            native = self._native(variant, num_qo_heads, num_kv_heads, page_size, split_kv, knobs)
            if native is not None and self._plan_native(
                native, qo_indptr, kv_indptr, kv_indices, kv_last_page_len, knobs
            ):
                return
        kv_ptr = host_index("kv_indptr", kv_indptr)
        batch = kv_ptr.shape[0] - 1
        indices_on_device = (
            isinstance(kv_indices, torch.Tensor) and kv_indices.device.type == self.device_type
        )
        last = host_indices = None
        if self.paged:
            if kv_indices is None or kv_last_page_len is None:
                raise InvalidArgument("a paged KV cache needs kv_indices and kv_last_page_len")
            host_indices = None if indices_on_device else host_index("kv_indices", kv_indices)
            num_indices = kv_indices.shape[0] if indices_on_device else host_indices.shape[0]
            last = host_index("kv_last_page_len", kv_last_page_len, length=batch)
            kv_lens = paged_lengths(kv_ptr, last, page_size, num_indices)
        else:
            check_indptr("kv_indptr", kv_ptr)
            kv_lens, num_indices = np.diff(kv_ptr), 0
        qo_ptr = None
        if not decode:
            qo_ptr = host_index("qo_indptr", qo_indptr, length=batch + 1)
            check_indptr("qo_indptr", qo_ptr)
        check_knobs(variant, knobs, num_qo_heads)
        kernel = kernel_shape(variant, self.device_index)
        num_tokens = batch if decode else int(qo_ptr[-1])
        if self.graph:
            lay = self._fixed_layout(variant, num_qo_heads, num_kv_heads, kernel)
            if self.paged and num_indices > self.max_pages:
                raise InvalidArgument(
                    f"{num_indices} kv_indices exceed the wrapper's max_num_pages {self.max_pages}"
                )
        else:
            host_pages = 0 if host_indices is None else num_indices
            lay = _layout(
                max(batch, 1),
                max(num_tokens, 1),
                num_qo_heads // num_kv_heads,
                kernel.cta_tile_q,
                kernel.num_sms,
                decode,
                host_pages,
                num_qo_heads,
                variant.head_dim,
            )
            self._check_workspace_fits(lay, host_pages)
        p = scheduler.plan(
            None if decode else np.diff(qo_ptr),
            kv_lens,
            num_qo_heads=num_qo_heads,
            num_kv_heads=num_kv_heads,
            page_size=page_size,
            kernel=kernel,
            mask=variant.mask,
            window_left=knobs["window_left"],
            split_kv=split_kv,
            kv_bytes=KV_BYTES[variant.kv_dtype],
            capacity=lay.capacity,
            fixed_grid=self.graph,
            cost=scheduler.DEFAULT_COST if decode else scheduler.PREFILL_COST,
        )

        rows = lay.capacity.batch + 1 if self.graph else batch + 1
        arrays = {"kv_indptr": _pad(kv_ptr, rows) if self.graph else kv_ptr}
        if self.paged:
            arrays["kv_last_page_len"] = _pad(last, rows - 1) if self.graph else last
            if host_indices is not None:
                arrays["kv_indices"] = host_indices
        if qo_ptr is not None:
            arrays["qo_indptr"] = _pad(qo_ptr, rows) if self.graph else qo_ptr
        host = self.staging.reserve(lay.metadata_bytes)
        self.staging.upload(self.workspace, scheduler.pack_metadata(p, lay, host, arrays))
        if indices_on_device:
            self._indices_from_device(kv_indices, lay, num_indices)

        self.plan_, self.variant, self.layout, self.rows = p, variant, lay, rows
        self.counts = (p.work.shape[0], p.merge_indptr.shape[0], p.merge_indices.shape[0])
        self.split = self.graph or p.split
        self.user_indices = kv_indices if indices_on_device and not self.graph else None
        self.knobs = self._device_knobs(knobs, custom_mask, qo_ptr, kv_lens)
        # Host-known bounds the kernels would otherwise read past: checked on the first run.
        self.bounds = (num_tokens, 0 if self.paged else int(kv_ptr[-1]), host_indices, int(kv_ptr[-1]))
        if not self.graph:
            self.prepared, self.views = {}, None

    @property
    def plan_info(self) -> scheduler.Plan | None:
        if isinstance(self.plan_, native_plan.NativePlan):
            self.plan_ = self.plan_.to_plan()  # before the next plan rewrites the staging buffer
        return self.plan_

    def _native(self, variant, num_qo_heads, num_kv_heads, page_size, split_kv, knobs):
        """The C planner set up for this problem (None where it does not apply: the Python path plans).
        Cached for the wrapper's last problem: a serving loop plans the same one for every step."""
        key = (variant, num_qo_heads, num_kv_heads, page_size, split_kv, *_knob_values(knobs))
        if self.native is not None and self.native[0] == key:
            return self.native[1]
        try:
            check_knobs(variant, knobs, num_qo_heads)
            kernel = kernel_shape(variant, self.device_index)
            planner = native_planner(variant, self.device_index)
        except (ValueError, RuntimeError):  # bad knobs, no kernel: the Python path raises it in its order
            return None
        decode = self.family == "decode"
        cost = scheduler.DEFAULT_COST if decode else scheduler.PREFILL_COST
        native = None
        if planner is not None and native_plan.eligible(
            variant, kernel, num_qo_heads, num_kv_heads, page_size, cost, decode=decode
        ):
            if self.device_type != "cuda":  # host seams (benchmarks, CPU tests): plan in C, upload via torch
                planner = planner._replace(upload=None, prefill_upload=None)
            problem = dict(
                num_qo_heads=num_qo_heads,
                num_kv_heads=num_kv_heads,
                page_size=page_size,
                window_left=knobs["window_left"],
                split_kv=split_kv,
                kv_bytes=KV_BYTES[variant.kv_dtype],
                cost=cost,
                mask=variant.mask,
            )
            native = _Native(planner, kernel, variant, decode, problem)
        self.native = (key, native)
        return native

    def _plan_native(self, native, qo_indptr, kv_indptr, kv_indices, kv_last_page_len, knobs) -> bool:
        """Engine.plan through the C planner: False (nothing done) for inputs it does not take as they
        are (lists, int64, CUDA index arrays...) and for errors, which the Python path converts, checks
        and raises as it always did."""
        kv = _int32_host(kv_indptr)
        last = _int32_host(kv_last_page_len) if self.paged else (None, None)
        qo = None if native.decode else _int32_host(qo_indptr)
        if kv is None or last is None or (qo is None and not native.decode):
            return False
        batch = kv[1] - 1
        if (self.paged and last[1] != batch) or (qo is not None and qo[1] != batch + 1) or batch < 0:
            return False
        on_device = isinstance(kv_indices, torch.Tensor) and kv_indices.device.type == self.device_type
        indices, num_indices = None, 0
        if on_device:
            num_indices = kv_indices.shape[0]
        elif self.paged:
            host = _int32_host(kv_indices)
            if host is None:
                return False
            indices, num_indices = host
        if self.graph and num_indices > self.max_pages:
            return False  # an error: the Python path raises it after checking the index arrays, as always
        num_tokens = batch if qo is None else ctypes.c_int32.from_address(qo[0] + 4 * batch).value
        key = None if self.graph else (batch, num_tokens, 0 if indices is None else num_indices)
        entry = native.entries.get(key)
        if entry is None:
            lay = self._native_layout(native, key)
            if lay is None:
                return False
            entry = native.add(key, lay, self.graph)
        lay, cfg_ref, cfg = entry
        result = abi.PlanResult()
        ref, staging = ctypes.byref(result), self.staging
        args = (cfg_ref, kv[0], last[0], indices, batch, num_indices)
        if qo is not None:
            args = (cfg_ref, qo[0], *args[1:])
        upload = native.planner.upload if native.decode else native.planner.prefill_upload
        if upload is not None:  # the wait for the last upload, the plan and its upload in one call
            staging.grow(lay.metadata_bytes)
            # the raw handle of torch's current stream: torch.cuda.current_stream() builds a Stream object
            stream = torch._C._cuda_getCurrentRawStream(self.device_index)
            err = upload(*args, staging.ptr, ref, self.workspace_ptr, stream, staging.event())
        else:
            staging.reserve(lay.metadata_bytes)
            err = (native.planner.plan if native.decode else native.planner.prefill)(*args, staging.ptr, ref)
            if not err:
                staging.upload(self.workspace, result.upload_bytes)
        if err:
            if err == abi.PLAN_CUDA or native.decode:
                raise native_error(result)
            return False  # prefill: the Python path raises the error, in its order
        if on_device:
            self._indices_from_device(kv_indices, lay, num_indices)

        self.plan_ = native_plan.NativePlan(result, self.staging.array, cfg)
        self.variant, self.layout = native.variant, lay
        self.rows = lay.capacity.batch + 1 if self.graph else batch + 1
        self.counts = (result.grid, result.merge_indptr_len, result.num_merge_entries)
        self.split = self.graph or result.chunk_size > 0
        self.user_indices = kv_indices if on_device and not self.graph else None
        self.knobs = knobs
        kv_used = result.kv_used
        self.bounds = (num_tokens, 0 if self.paged else kv_used, None if on_device else kv_indices, kv_used)
        if not self.graph:
            self.prepared, self.views = {}, None
        return True

    def _native_layout(self, native, key):
        """The layout the Python path would size for this batch (graph mode: the fixed one), or None where
        the workspace does not fit it (the Python path raises that after checking the index arrays)."""
        if key is None:
            try:
                return self._fixed_layout(
                    native.variant,
                    native.problem["num_qo_heads"],
                    native.problem["num_kv_heads"],
                    native.kernel,
                )
            except InvalidArgument:
                return None
        batch, num_tokens, host_pages = key
        k, hq = native.kernel, native.problem["num_qo_heads"]
        lay = _layout(
            max(batch, 1),
            max(num_tokens, 1),
            hq // native.problem["num_kv_heads"],
            k.cta_tile_q,
            k.num_sms,
            native.decode,
            host_pages,
            hq,
            native.variant.head_dim,
        )
        return lay if self.workspace_bytes >= lay.total_bytes else None

    def _check_workspace_fits(self, lay, host_pages):
        if self.workspace_bytes < lay.total_bytes:
            pages = f" with max_num_pages >= {host_pages} (kv_indices given on the host are copied in)"
            raise InvalidArgument(
                f"workspace holds {self.workspace_bytes} bytes but this batch needs {lay.total_bytes}: "
                f"allocate workspace_size(...{pages if host_pages else ''}) bytes for your largest batch"
            )

    def _fixed_layout(self, variant, num_qo_heads, num_kv_heads, kernel):
        key = (variant, num_qo_heads, num_kv_heads)
        if self.fixed is None:
            lay = _layout(
                self.max_batch,
                self.max_tokens,
                num_qo_heads // num_kv_heads,
                kernel.cta_tile_q,
                kernel.num_sms,
                self.family == "decode",
                self.max_pages,
                num_qo_heads,
                variant.head_dim,
            )
            if self.workspace.numel() < lay.total_bytes:
                raise InvalidArgument(
                    f"workspace holds {self.workspace.numel()} bytes but these bounds need "
                    f"{lay.total_bytes}: allocate workspace_size(...) bytes"
                )
            self.fixed = (key, lay)
        elif self.fixed[0] != key:
            (v, hq, hkv), _ = self.fixed
            raise InvalidArgument(
                "a CUDA-graph wrapper keeps the variant and head counts of its first plan "
                f"({v.id}, {hq}/{hkv} heads): use another wrapper"
            )
        return self.fixed[1]

    def _indices_from_device(self, kv_indices, lay, count):
        if (
            kv_indices.dtype != torch.int32
            or kv_indices.device != self.workspace.device
            or kv_indices.dim() != 1
        ):
            raise InvalidArgument("kv_indices must be a 1-D int32 tensor on the workspace's device")
        if self.graph and count:
            region = self.workspace[lay.kv_indices : lay.kv_indices + count * 4].view(torch.int32)
            region.copy_(kv_indices[:count], non_blocking=True)

    def _device_knobs(self, kn, custom_mask, qo_ptr, kv_lens):
        slopes = kn["alibi_slopes"]
        if slopes is None and self.variant.mask != "custom":
            if custom_mask is not None:
                raise InvalidArgument("custom_mask is only read with mask='custom'")
            return kn
        kn = dict(kn)
        device = self.workspace.device
        if slopes is not None:
            slopes = torch.as_tensor(slopes, dtype=torch.float32)
            previous = getattr(self, "knobs", {}).get("alibi_slopes")
            if self.graph and previous is not None:
                previous.copy_(slopes, non_blocking=True)
                slopes = previous
            else:
                slopes = slopes.to(device, non_blocking=True)
            kn["alibi_slopes"] = slopes
        if self.variant.mask == "custom":
            if self.graph:
                raise InvalidArgument("custom masks are not supported in CUDA-graph mode")
            kn["custom_mask"], kn["mask_indptr"] = pack_mask(custom_mask, np.diff(qo_ptr), kv_lens, device)
        return kn

    def run(self, q, k, v, out, lse, return_lse):
        if self.plan_ is None:
            raise RuntimeError("call plan() before run()")
        if not self.graph and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "run() is being captured in a CUDA graph, but this wrapper was not built with "
                "use_cuda_graph=True: its buffers move with each plan, so a replay would read stale ones"
            )
        if self.graph and q.shape[0] != self.max_tokens:
            raise InvalidArgument(
                f"in CUDA-graph mode q must have the bound's {self.max_tokens} rows (pad the batch), "
                f"got {q.shape[0]}"
            )
        if out is None:
            out = self._output(q)
        if lse is None and return_lse:
            lse = self._lse(q)
        self.launcher(q, k, v, out, lse)()
        return (out, lse) if return_lse else out

    def launcher(self, q, k, v, out, lse=None):
        """The kernel launches of run() for these tensors, as a closure (benchmarks capture it in a
        CUDA graph; valid until the next plan)."""
        key = (signature(q), signature(k), signature(v), signature(out), signature(lse))
        prepared = self.prepared.get(key)
        if prepared is None:
            prepared = self.prepared[key] = self._prepare(q, k, v, out, lse)
        attention, merge = prepared

        def launch():
            if attention is not None:  # None: an empty batch
                attention.launch(q, k, v, out, lse)
            if merge is not None:
                merge.launch(out, lse)

        return launch

    def _output(self, q):
        if not self.graph:
            return torch.empty_like(q)
        if getattr(self, "_out", None) is None or self._out.shape != q.shape:
            self._out = torch.empty_like(q)
        return self._out

    def _lse(self, q):
        shape = (q.shape[0], q.shape[1])
        if not self.graph:
            return torch.empty(shape, dtype=torch.float32, device=q.device)
        if getattr(self, "_lse_out", None) is None or self._lse_out.shape != shape:
            self._lse_out = torch.empty(shape, dtype=torch.float32, device=q.device)
        return self._lse_out

    def _prepare(self, q, k, v, out, lse):
        if not self.graph and self.plan_.num_items == 0:
            return None, None
        self._check_bounds(q, k)
        if self.views is None:
            self.views = self._views()
        views = self.views
        kn = {name: value for name, value in self.knobs.items() if value is not None}
        attention = ops.prepare_attention(
            self.variant,
            q,
            k,
            v,
            out,
            kv_indptr=views["kv_indptr"],
            kv_indices=views.get("kv_indices"),
            kv_last_page_len=views.get("kv_last_page_len"),
            kv_layout=self.kv_layout,
            qo_indptr=views.get("qo_indptr"),
            work=views["work"],
            partial_o=views.get("partial_o"),
            partial_lse=views.get("partial_lse"),
            lse=lse,
            # Everything but a user's device kv_indices lives in the workspace, uploaded by plan()
            # before any launch of the plan: the kernels may read it early (ops.prepare_attention).
            index_ready=True,
            pages_ready=self.user_indices is None,
            **kn,
        )
        merge = None
        if self.split:
            merge = ops.prepare_merge(
                views["partial_o"],
                views["partial_lse"],
                views["merge_indptr"],
                views["merge_indices"],
                out,
                lse,
                index_ready=True,
            )
        return attention, merge

    def _check_bounds(self, q, k) -> None:
        q_rows, kv_rows, host_indices, used = self.bounds
        if q.dim() >= 1 and q.shape[0] < q_rows:
            raise InvalidArgument(f"q has {q.shape[0]} rows but the plan has {q_rows} query tokens")
        if not self.paged and k.dim() >= 1 and k.shape[0] < kv_rows:
            raise InvalidArgument(f"kv_indptr needs {kv_rows} KV rows but k has {k.shape[0]}")
        if self.paged and host_indices is not None and used and k.dim() == 4:
            ids = host_indices[:used]
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= k.shape[0]:
                raise InvalidArgument(
                    f"kv_indices holds page id {lo if lo < 0 else hi}, outside the cache's "
                    f"pages [0, {k.shape[0]})"
                )

    def _views(self) -> dict:
        ws, p, lay, rows = self.workspace, self.plan_, self.layout, self.rows

        def view(offset, count, dtype=torch.int32):
            return ws[offset : offset + count * 4].view(dtype)  # int32 and float32 alike

        cap = lay.capacity
        grid, merge_rows, merge_entries = self.counts
        views = {
            "work": view(lay.work, grid * abi.WORK_ITEM_FIELDS).view(-1, abi.WORK_ITEM_FIELDS),
            "kv_indptr": view(lay.kv_indptr, rows),
            "merge_indptr": view(lay.merge_indptr, merge_rows),
            "merge_indices": view(lay.merge_indices, cap.partial_rows if self.graph else merge_entries),
        }
        if self.paged:
            views["kv_last_page_len"] = view(lay.kv_last_page_len, rows - 1)
            indices = self.user_indices
            views["kv_indices"] = indices if indices is not None else view(lay.kv_indices, cap.pages)
        if self.family == "prefill":
            views["qo_indptr"] = view(lay.qo_indptr, rows)
        if self.split:
            partial_rows = cap.partial_rows if self.graph else p.num_partial_rows
            heads, dim = lay.num_qo_heads, lay.head_dim
            views["partial_o"] = view(lay.partial_o, partial_rows * heads * dim, torch.float32).view(
                -1, heads, dim
            )
            views["partial_lse"] = view(lay.partial_lse, partial_rows * heads, torch.float32).view(-1, heads)
        return views


def _knob_values(kn: dict) -> tuple:
    return (
        kn["sm_scale"],
        kn["logits_soft_cap"],
        kn["rope_scale"],
        kn["rope_theta"],
        kn["k_scale"],
        kn["v_scale"],
        kn["window_left"],
    )


def _int32_host(values) -> tuple[int, int] | None:
    """(address, length) of a 1-D contiguous int32 CPU tensor or numpy array, else None."""
    if type(values) is torch.Tensor:
        if values.dtype is torch.int32 and values.is_cpu and values.dim() == 1 and values.is_contiguous():
            return values.data_ptr(), values.shape[0]
        return None
    if (
        type(values) is np.ndarray
        and values.dtype == np.int32
        and values.ndim == 1
        and values.flags.c_contiguous
    ):
        return values.ctypes.data, values.shape[0]
    return None


@functools.cache
def native_planner(variant: Variant, device_index: int) -> native_plan.Planner | None:
    """The C planner of the pack that runs `variant` on this GPU, or None (a pack without it)."""
    pack = loader.find_kernel(variant, torch.cuda.get_device_capability(device_index)).pack
    return native_plan.planner_of(pack)


class _Native:
    """One problem's C planner: the pack's functions and, per workspace layout, the config struct."""

    def __init__(self, planner: native_plan.Planner, kernel, variant, decode: bool, problem: dict):
        self.planner, self.kernel, self.variant, self.decode = planner, kernel, variant, decode
        self.problem = problem  # native_plan.config's arguments but the layout's
        # per (batch, query tokens, host page count); graph mode: key None -> (layout, config ref, config)
        self.entries: dict[tuple[int, int, int] | None, tuple] = {}

    def add(self, key, lay: scheduler.WorkspaceLayout, fixed_grid: bool) -> tuple:
        cfg = native_plan.config(lay, self.kernel, fixed_grid=fixed_grid, **self.problem)
        if len(self.entries) >= 64:
            self.entries.clear()
        entry = self.entries[key] = (lay, ctypes.byref(cfg), cfg)
        return entry


def pack_mask(custom_mask, qo_lens, kv_lens, device):
    """Bool masks of all requests, flattened and concatenated, as the kernels' bits (little-endian
    within each byte) and the bit offset of each request's [q_len, kv_len] block."""
    sizes = qo_lens.astype(np.int64) * kv_lens
    if custom_mask is None or custom_mask.dim() != 1 or custom_mask.shape[0] != int(sizes.sum()):
        raise InvalidArgument(
            f"custom_mask must be a 1-D bool tensor of {int(sizes.sum())} entries (every request's "
            "[q_len, kv_len] mask, flattened and concatenated)"
        )
    bits = custom_mask.to(device=device, dtype=torch.uint8)
    bits = torch.nn.functional.pad(bits, (0, (-bits.shape[0]) % 8)).view(-1, 8)
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=device)
    packed = (bits * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)])).to(device)
    return packed, indptr
