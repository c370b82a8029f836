"""Plan/run wrappers for batch decode (paged KV) and batch prefill (paged or ragged KV), and
single-request helpers. Names and argument order follow FlashInfer's wrappers.

`plan` runs once per batch on the host (all layers share it): it reads the index arrays on the host
(pass CPU tensors, lists or numpy arrays; CUDA tensors cost a device-to-host copy, which waits for
the GPU), picks the built variant, asks the scheduler (kernels/scheduler.py) for a work list, and
uploads the work list, the merge index and the index arrays into the caller's workspace with ONE
asynchronous copy from a pinned staging buffer the wrapper keeps. `run` only launches: the attention
kernel, then (when the plan split any request's keys) the merge kernel.

Kernel params are built (and every argument validated, by kernels/ops.py) on the first run after a
plan with each tensor geometry; later runs with the same geometry, e.g. the other layers of a model,
only re-point the tensors and launch.

CUDA graphs: a wrapper built with use_cuda_graph=True and upper bounds keeps its grid and every
buffer address for life. Each plan rewrites buffer contents only (padding work items have request
-1; requests past the batch are empty), so a graph captured once replays correctly for any later
batch within the bounds. In that mode q (and out) have exactly the bound's rows (max_batch_size for
decode, max_num_tokens for prefill); rows past the planned batch are ignored and their outputs left
as they were. Call plan on the stream that runs or replays the graph.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..variants import Variant
from . import abi, ops, scheduler
from .checks import InvalidArgument, check_scalar

DTYPE_NAMES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float8_e4m3fn: "fp8e4m3",
    torch.float8_e5m2: "fp8e5m2",
}
KV_BYTES = {"bf16": 2, "fp16": 2, "fp8e4m3": 1, "fp8e5m2": 1}


def _dtype_name(name: str, dtype) -> str:
    if isinstance(dtype, str) and dtype in KV_BYTES:
        return dtype
    if dtype in DTYPE_NAMES:
        return DTYPE_NAMES[dtype]
    raise InvalidArgument(f"{name} must be one of {', '.join(KV_BYTES)} (or the torch dtype), got {dtype!r}")


@functools.cache
def _kernel_shape(variant: Variant, device_index: int) -> scheduler.KernelShape:
    info = ops.kernel_info(variant, torch.device("cuda", device_index))
    if info.ctas_per_sm < 1:
        raise InvalidArgument(
            f"{variant.id} cannot run on this GPU (its shared memory or registers do not fit)"
        )
    num_sms = torch.cuda.get_device_properties(device_index).multi_processor_count
    return scheduler.KernelShape(num_sms, info.ctas_per_sm, info.cta_tile_q, info.cta_tile_kv)


def _host_index(name: str, values, *, length: int | None = None) -> np.ndarray:
    """An index array as host int32 numpy (a CUDA tensor is copied, which waits for the device)."""
    if isinstance(values, torch.Tensor):
        if values.dtype not in (torch.int32, torch.int64):
            raise InvalidArgument(f"{name} must hold int32 values, got {values.dtype}")
        values = values.cpu().numpy() if values.is_cuda else values.numpy()
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise InvalidArgument(
            f"{name} must be a 1-D array of integers, got shape {array.shape} of {array.dtype}"
        )
    if length is not None and array.shape[0] != length:
        raise InvalidArgument(f"{name} must have {length} entries, got {array.shape[0]}")
    return array.astype(np.int32, copy=False)


def _check_indptr(name: str, indptr: np.ndarray, total: int | None = None) -> None:
    if indptr.shape[0] < 1 or indptr[0] != 0:
        raise InvalidArgument(f"{name} must start at 0 and hold batch_size + 1 entries")
    if indptr.shape[0] > 1 and np.diff(indptr).min() < 0:
        raise InvalidArgument(f"{name} must be non-decreasing")
    if total is not None and indptr[-1] > total:
        raise InvalidArgument(f"{name}[-1] = {indptr[-1]} exceeds the {total} entries it indexes")


def _pad(values: np.ndarray, length: int) -> np.ndarray:
    """Graph mode: index arrays padded to the bound with empty requests."""
    if values.shape[0] >= length:
        return values
    fill = values[-1] if values.shape[0] else 0
    return np.concatenate([values, np.full(length - values.shape[0], fill, np.int32)])


class _Staging:
    """The pinned host buffer plans are written into, and the event of its last upload: the buffer is
    reused, so a new plan first waits for the previous upload (long finished in practice)."""

    def __init__(self) -> None:
        self.host = torch.empty(0, dtype=torch.int32)
        self.array = self.host.numpy()
        self.uploaded: torch.cuda.Event | None = None

    def reserve(self, nbytes: int) -> np.ndarray:
        if self.uploaded is not None and not self.uploaded.query():
            self.uploaded.synchronize()
        if self.host.numel() * 4 < nbytes:
            self.host = torch.empty(
                max(nbytes // 4, 2 * self.host.numel()), dtype=torch.int32, pin_memory=True
            )
            self.array = self.host.numpy()
        return self.array

    def upload(self, workspace: torch.Tensor, nbytes: int) -> None:
        workspace[:nbytes].copy_(self.host.view(torch.uint8)[:nbytes], non_blocking=True)
        self.uploaded = torch.cuda.Event()
        self.uploaded.record()


class _Engine:
    """Plan state of one wrapper: workspace views, the current plan, the prepared launches."""

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
        if not isinstance(workspace, torch.Tensor) or workspace.dtype != torch.uint8 or not workspace.is_cuda:
            raise InvalidArgument("workspace must be a uint8 CUDA tensor (see workspace_size)")
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
        self.staging = _Staging()
        self.fixed: tuple | None = None  # graph mode: (problem key, capacity, layout) of the first plan
        self.planned = False

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
        device = self.workspace.device
        decode = self.family == "decode"
        kv_ptr = _host_index("kv_indptr", kv_indptr)
        batch = kv_ptr.shape[0] - 1
        indices_on_device = isinstance(kv_indices, torch.Tensor) and kv_indices.is_cuda
        if self.paged:
            if kv_indices is None or kv_last_page_len is None:
                raise InvalidArgument("a paged KV cache needs kv_indices and kv_last_page_len")
            num_indices = kv_indices.shape[0] if indices_on_device else len(kv_indices)
            _check_indptr("kv_indptr", kv_ptr, num_indices)
            last = _host_index("kv_last_page_len", kv_last_page_len, length=batch)
            pages = np.diff(kv_ptr)
            if batch and ((pages > 0) & ((last < 1) | (last > page_size))).any():
                raise InvalidArgument(f"kv_last_page_len must lie in [1, page_size = {page_size}]")
            kv_lens = scheduler.kv_lengths(kv_ptr, last, page_size)
        else:
            _check_indptr("kv_indptr", kv_ptr)
            kv_lens, last, num_indices = np.diff(kv_ptr), None, 0
        qo_ptr = None
        if not decode:
            qo_ptr = _host_index("qo_indptr", qo_indptr, length=batch + 1)
            _check_indptr("qo_indptr", qo_ptr)

        _check_knobs(variant, knobs, num_qo_heads)
        kernel = _kernel_shape(
            variant, device.index if device.index is not None else torch.cuda.current_device()
        )
        group = num_qo_heads // num_kv_heads
        num_tokens = batch if decode else int(qo_ptr[-1])
        if self.graph:
            cap, lay = self._fixed_layout(variant, num_qo_heads, num_kv_heads, kernel)
            if self.paged and num_indices > self.max_pages:
                raise InvalidArgument(
                    f"{num_indices} kv_indices exceed the wrapper's max_num_pages {self.max_pages}"
                )
        else:
            host_pages = num_indices if self.paged and not indices_on_device else 0
            cap = scheduler.capacity(
                max_batch=max(batch, 1),
                max_tokens=max(num_tokens, 1),
                group=group,
                cta_tile_q=kernel.cta_tile_q,
                num_sms=kernel.num_sms,
                decode=decode,
                max_pages=host_pages,
            )
            lay = scheduler.layout(cap, num_qo_heads, variant.head_dim)
            if self.workspace.numel() < lay.total_bytes:
                pages = f" with max_num_pages >= {host_pages} (kv_indices given on the host are copied in)"
                raise InvalidArgument(
                    f"workspace holds {self.workspace.numel()} bytes but this batch needs {lay.total_bytes}: "
                    f"allocate workspace_size(...{pages if host_pages else ''}) bytes for your largest batch"
                )
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
            capacity=cap,
            fixed_grid=self.graph,
        )

        rows = cap.batch + 1 if self.graph else batch + 1
        arrays = {"kv_indptr": _pad(kv_ptr, rows)}
        if self.paged:
            arrays["kv_last_page_len"] = _pad(last, rows - 1)
            if not indices_on_device:
                arrays["kv_indices"] = _host_index("kv_indices", kv_indices)
        if qo_ptr is not None:
            arrays["qo_indptr"] = _pad(qo_ptr, rows)
        host = self.staging.reserve(lay.metadata_bytes)
        nbytes = scheduler.pack_metadata(p, lay, host, arrays)
        self.staging.upload(self.workspace, nbytes)
        if self.paged and indices_on_device:
            self._indices_from_device(kv_indices, lay, num_indices)

        self.plan_ = p
        self.variant = variant
        self.split = self.graph or p.split
        self.views = self._views(p, lay, rows, kv_indices if indices_on_device and not self.graph else None)
        self.knobs = self._device_knobs(knobs, custom_mask, qo_ptr, kv_lens, device)
        # Host-known bounds that the kernels would otherwise read past, checked once per tensor geometry.
        self.bounds = {
            "q rows": num_tokens,
            "kv rows": 0 if self.paged else int(kv_ptr[-1]),
            "pages": _largest_page(kv_indices, kv_ptr) + 1 if self.paged and not indices_on_device else 0,
        }
        if not self.graph or not self.planned:
            self.prepared = {}
        self.planned = True

    def _fixed_layout(self, variant, num_qo_heads, num_kv_heads, kernel):
        key = (variant, num_qo_heads, num_kv_heads)
        if self.fixed is None:
            cap = scheduler.capacity(
                max_batch=self.max_batch,
                max_tokens=self.max_tokens,
                group=num_qo_heads // num_kv_heads,
                cta_tile_q=kernel.cta_tile_q,
                num_sms=kernel.num_sms,
                decode=self.family == "decode",
                max_pages=self.max_pages,
            )
            lay = scheduler.layout(cap, num_qo_heads, variant.head_dim)
            if self.workspace.numel() < lay.total_bytes:
                raise InvalidArgument(
                    f"workspace holds {self.workspace.numel()} bytes but these bounds need "
                    f"{lay.total_bytes}: allocate workspace_size(...) bytes"
                )
            self.fixed = (key, cap, lay)
        elif self.fixed[0] != key:
            raise InvalidArgument(
                "a CUDA-graph wrapper keeps the variant and head counts of its first plan "
                f"({self.fixed[0][0].id}, {self.fixed[0][1]}/{self.fixed[0][2]} heads): use another wrapper"
            )
        return self.fixed[1], self.fixed[2]

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

    def _views(self, p, lay, rows, indices):
        ws = self.workspace

        def view(offset, count, dtype=torch.int32):
            return ws[offset : offset + count * 4].view(dtype)  # int32 and float32 alike

        cap = lay.capacity
        views = {
            "work": view(lay.work, p.work.size).view(-1, abi.WORK_ITEM_FIELDS),
            "kv_indptr": view(lay.kv_indptr, rows),
            "merge_indptr": view(lay.merge_indptr, p.merge_indptr.shape[0]),
            "merge_indices": view(
                lay.merge_indices, cap.partial_rows if self.graph else p.merge_indices.shape[0]
            ),
        }
        if self.paged:
            views["kv_last_page_len"] = view(lay.kv_last_page_len, rows - 1)
            views["kv_indices"] = indices if indices is not None else view(lay.kv_indices, cap.pages)
        if self.family == "prefill":
            views["qo_indptr"] = view(lay.qo_indptr, rows)
        partial_rows = cap.partial_rows if self.graph else p.num_partial_rows
        if self.graph or p.split:
            heads, dim = lay.num_qo_heads, lay.head_dim
            views["partial_o"] = view(lay.partial_o, partial_rows * heads * dim, torch.float32).view(
                -1, heads, dim
            )
            views["partial_lse"] = view(lay.partial_lse, partial_rows * heads, torch.float32).view(-1, heads)
        return views

    def _device_knobs(self, knobs, custom_mask, qo_ptr, kv_lens, device):
        knobs = dict(knobs)
        slopes = knobs.get("alibi_slopes")
        if slopes is not None:
            slopes = torch.as_tensor(slopes, dtype=torch.float32)
            if self.graph and getattr(self, "knobs", {}).get("alibi_slopes") is not None:
                self.knobs["alibi_slopes"].copy_(slopes, non_blocking=True)
                slopes = self.knobs["alibi_slopes"]
            else:
                slopes = slopes.to(device, non_blocking=True)
            knobs["alibi_slopes"] = slopes
        if self.variant.mask == "custom":
            if self.graph:
                raise InvalidArgument("custom masks are not supported in CUDA-graph mode")
            knobs["custom_mask"], knobs["mask_indptr"] = _pack_mask(
                custom_mask, np.diff(qo_ptr), kv_lens, device
            )
        elif custom_mask is not None:
            raise InvalidArgument("custom_mask is only read with mask='custom'")
        return knobs

    def run(self, q, k, v, out, lse, return_lse):
        if not self.planned:
            raise RuntimeError("call plan() before run()")
        if torch.cuda.is_current_stream_capturing() and not self.graph:
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
        key = tuple(_signature(t) for t in (q, k, v, out, lse))
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
        _check_bounds(self.bounds, q, k, self.kv_layout, self.paged)
        v_ = self.views
        knobs = {name: value for name, value in self.knobs.items() if value is not None}
        attention = ops.prepare_attention(
            self.variant,
            q,
            k,
            v,
            out,
            kv_indptr=v_["kv_indptr"],
            kv_indices=v_.get("kv_indices"),
            kv_last_page_len=v_.get("kv_last_page_len"),
            kv_layout=self.kv_layout,
            qo_indptr=v_.get("qo_indptr"),
            work=v_["work"],
            partial_o=v_.get("partial_o"),
            partial_lse=v_.get("partial_lse"),
            lse=lse,
            **knobs,
        )
        merge = None
        if self.split:
            merge = ops.prepare_merge(
                v_["partial_o"], v_["partial_lse"], v_["merge_indptr"], v_["merge_indices"], out, lse
            )
        return attention, merge


def _signature(t: torch.Tensor | None):
    return None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.device)


def _largest_page(kv_indices, kv_ptr: np.ndarray) -> int:
    used = int(kv_ptr[-1]) if kv_ptr.shape[0] else 0
    if not used:
        return -1
    ids = _host_index("kv_indices", kv_indices)[:used]
    if ids.min() < 0:
        raise InvalidArgument(f"kv_indices holds a negative page id ({ids.min()})")
    return int(ids.max())


def _check_bounds(bounds: dict, q: torch.Tensor, k: torch.Tensor, kv_layout: str, paged: bool) -> None:
    if q.dim() >= 1 and q.shape[0] < bounds["q rows"]:
        raise InvalidArgument(f"q has {q.shape[0]} rows but the plan has {bounds['q rows']} query tokens")
    if paged and k.dim() == 4 and k.shape[0] < bounds["pages"]:
        raise InvalidArgument(
            f"kv_indices names page {bounds['pages'] - 1} but the cache has {k.shape[0]} pages"
        )
    if not paged and k.dim() >= 1 and k.shape[0] < bounds["kv rows"]:
        raise InvalidArgument(f"kv_indptr needs {bounds['kv rows']} KV rows but k has {k.shape[0]}")


def _check_knobs(variant: Variant, knobs: dict, num_qo_heads: int) -> None:
    """Plan-time checks of the variant's scalars (ops.prepare_attention repeats them with the tensors)."""
    if knobs["sm_scale"] is not None:
        check_scalar("sm_scale", knobs["sm_scale"], positive=True)
    for name in ("k_scale", "v_scale", "rope_scale", "rope_theta"):
        check_scalar(name, knobs[name], positive=True)
    if variant.soft_cap:
        check_scalar("logits_soft_cap", knobs["logits_soft_cap"], positive=True)
    if (variant.mask == "sliding_window") != (knobs["window_left"] >= 0):
        raise InvalidArgument(
            f"window_left={knobs['window_left']} with mask={variant.mask!r}: a sliding window needs "
            "window_left >= 0, other masks leave it -1"
        )
    slopes = knobs["alibi_slopes"]
    if (variant.pos == "alibi") != (slopes is not None):
        raise InvalidArgument("alibi_slopes go with pos='alibi' and only with it")
    if slopes is not None and len(slopes) != num_qo_heads:
        raise InvalidArgument(
            f"alibi_slopes must have num_qo_heads = {num_qo_heads} entries, got {len(slopes)}"
        )


def _pack_mask(custom_mask, qo_lens, kv_lens, device):
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


def _variant(family, q_dtype, kv_dtype, head_dim, mask, pos, logits_soft_cap) -> Variant:
    q_name = _dtype_name("q_dtype", q_dtype)
    kv_name = q_name if kv_dtype is None else _dtype_name("kv_dtype", kv_dtype)
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


def _knobs(sm_scale, logits_soft_cap, rope_scale, rope_theta, k_scale, v_scale, window_left, alibi_slopes):
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


def _check_heads(num_qo_heads, num_kv_heads):
    if num_kv_heads < 1 or num_qo_heads < 1 or num_qo_heads % num_kv_heads:
        raise InvalidArgument(
            f"num_qo_heads {num_qo_heads} must be a positive multiple of num_kv_heads {num_kv_heads}"
        )


class BatchDecodeWrapper:
    """Batch decode over a paged KV cache: one query token per request."""

    def __init__(
        self,
        workspace: torch.Tensor,
        kv_layout: str = "NHD",
        *,
        use_cuda_graph: bool = False,
        max_batch_size: int | None = None,
        max_num_pages: int | None = None,
    ):
        self._engine = _Engine(
            workspace,
            kv_layout,
            family="decode",
            paged=True,
            use_cuda_graph=use_cuda_graph,
            max_batch_size=max_batch_size,
            max_num_tokens=None,
            max_num_pages=max_num_pages,
        )

    @property
    def plan_info(self) -> scheduler.Plan:
        """The scheduler's plan of the last plan() call (work list, chunk size, cost estimate)."""
        return self._engine.plan_

    def plan(
        self,
        kv_indptr,
        kv_indices,
        kv_last_page_len,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int,
        *,
        q_dtype=torch.bfloat16,
        kv_dtype=None,
        mask: str = "none",
        window_left: int = -1,
        pos: str = "none",
        logits_soft_cap: float | None = None,
        sm_scale: float | None = None,
        rope_scale: float = 1.0,
        rope_theta: float = 1e4,
        alibi_slopes=None,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
        split_kv: bool = True,
    ) -> None:
        """Plan a batch. kv_indptr [batch + 1] (pages), kv_indices, kv_last_page_len [batch]: int32 CPU
        tensors, lists or arrays (CUDA tensors work too, at the price of a device-to-host copy)."""
        _check_heads(num_qo_heads, num_kv_heads)
        variant = _variant("decode", q_dtype, kv_dtype, head_dim, mask, pos, logits_soft_cap)
        self._engine.plan(
            None,
            kv_indptr,
            kv_indices,
            kv_last_page_len,
            variant=variant,
            num_qo_heads=num_qo_heads,
            num_kv_heads=num_kv_heads,
            page_size=page_size,
            split_kv=split_kv,
            knobs=_knobs(
                sm_scale, logits_soft_cap, rope_scale, rope_theta, k_scale, v_scale, window_left, alibi_slopes
            ),
        )

    def run(self, q: torch.Tensor, paged_kv_cache, *, out=None, lse=None, return_lse: bool = False):
        """q [batch, Hq, D]; paged_kv_cache = (k_cache, v_cache), each [pages, page_size, Hkv, D] (NHD) or
        [pages, Hkv, page_size, D] (HND). Returns out (and lse [batch, Hq] float32 with return_lse)."""
        k, v = _split_cache(paged_kv_cache)
        return self._engine.run(q, k, v, out, lse, return_lse)

    def launcher(self, q, k, v, out, lse=None):
        """run()'s kernel launches for these tensors as a closure, valid until the next plan: what a
        benchmark captures in a CUDA graph to time the kernels without host overhead."""
        return self._engine.launcher(q, k, v, out, lse)


class BatchPrefillWrapper:
    """Batch prefill / append: several query tokens per request over a paged or a ragged KV."""

    def __init__(
        self,
        workspace: torch.Tensor,
        kv_layout: str = "NHD",
        *,
        paged: bool = True,
        use_cuda_graph: bool = False,
        max_batch_size: int | None = None,
        max_num_tokens: int | None = None,
        max_num_pages: int | None = None,
    ):
        self._engine = _Engine(
            workspace,
            kv_layout,
            family="prefill",
            paged=paged,
            use_cuda_graph=use_cuda_graph,
            max_batch_size=max_batch_size,
            max_num_tokens=max_num_tokens,
            max_num_pages=max_num_pages,
        )

    @property
    def plan_info(self) -> scheduler.Plan:
        return self._engine.plan_

    def plan(
        self,
        qo_indptr,
        kv_indptr,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        kv_indices=None,
        kv_last_page_len=None,
        page_size: int = 1,
        mask: str = "causal",
        custom_mask=None,
        window_left: int = -1,
        pos: str = "none",
        q_dtype=torch.bfloat16,
        kv_dtype=None,
        logits_soft_cap: float | None = None,
        sm_scale: float | None = None,
        rope_scale: float = 1.0,
        rope_theta: float = 1e4,
        alibi_slopes=None,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
        split_kv: bool = True,
    ) -> None:
        """Plan a batch. qo_indptr [batch + 1] (tokens); kv_indptr [batch + 1]: pages (paged, with
        kv_indices and kv_last_page_len) or tokens (ragged). Query i of a request of q_len queries over
        kv_len keys sits at position kv_len - q_len + i (causal aligned to the end). custom_mask: bool,
        every request's [q_len, kv_len] mask flattened and concatenated."""
        _check_heads(num_qo_heads, num_kv_heads)
        if not self._engine.paged and (kv_indices is not None or kv_last_page_len is not None):
            raise InvalidArgument("a ragged-KV wrapper (paged=False) takes no kv_indices or kv_last_page_len")
        variant = _variant("prefill", q_dtype, kv_dtype, head_dim, mask, pos, logits_soft_cap)
        self._engine.plan(
            qo_indptr,
            kv_indptr,
            kv_indices,
            kv_last_page_len,
            variant=variant,
            num_qo_heads=num_qo_heads,
            num_kv_heads=num_kv_heads,
            page_size=page_size if self._engine.paged else 1,
            split_kv=split_kv,
            knobs=_knobs(
                sm_scale, logits_soft_cap, rope_scale, rope_theta, k_scale, v_scale, window_left, alibi_slopes
            ),
            custom_mask=custom_mask,
        )

    def run(self, q: torch.Tensor, k, v=None, *, out=None, lse=None, return_lse: bool = False):
        """q [total_q, Hq, D]. Paged: k = (k_cache, v_cache), or the two caches as k and v. Ragged: k, v
        [total_kv, Hkv, D]. Returns out (and lse [total_q, Hq] float32 with return_lse)."""
        if v is None:
            k, v = _split_cache(k)
        return self._engine.run(q, k, v, out, lse, return_lse)

    def launcher(self, q, k, v, out, lse=None):
        """run()'s kernel launches for these tensors as a closure, valid until the next plan."""
        return self._engine.launcher(q, k, v, out, lse)


def _split_cache(cache):
    if isinstance(cache, (tuple, list)) and len(cache) == 2:
        return cache[0], cache[1]
    raise InvalidArgument("the paged KV cache must be a (k_cache, v_cache) pair")


def workspace_size(
    num_qo_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    max_batch_size: int,
    max_num_tokens: int | None = None,
    max_num_pages: int = 0,
    decode: bool = True,
    device=None,
) -> int:
    """Workspace bytes a wrapper needs for batches within these bounds, on `device` (default: the
    current GPU's SM count; without a GPU, an H100's 132). max_num_pages: room for kv_indices copies,
    needed by CUDA-graph wrappers and when kv_indices are given on the host."""
    num_sms = 132
    if torch.cuda.is_available():
        index = torch.device(device).index if device is not None else torch.cuda.current_device()
        num_sms = torch.cuda.get_device_properties(index or 0).multi_processor_count
    return scheduler.workspace_size(
        num_qo_heads,
        num_kv_heads,
        head_dim,
        max_batch_size=max_batch_size,
        max_num_tokens=max_num_tokens,
        max_num_pages=max_num_pages,
        num_sms=num_sms,
        decode=decode,
    )


_SINGLE_WORKSPACES: dict[int, torch.Tensor] = {}


def _single_workspace(device: torch.device, nbytes: int) -> torch.Tensor:
    index = device.index if device.index is not None else torch.cuda.current_device()
    ws = _SINGLE_WORKSPACES.get(index)
    if ws is None or ws.numel() < nbytes:
        ws = torch.empty(nbytes, dtype=torch.uint8, device=device)
        _SINGLE_WORKSPACES[index] = ws
    return ws


def single_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, return_lse: bool = False, **variant_kwargs
):
    """One request's decode: q [Hq, D], k/v [kv_len, Hkv, D]. variant_kwargs as BatchDecodeWrapper.plan
    (the dtypes come from the tensors). Splits long KV across the GPU like the batch wrapper."""
    _check_single(q, 2, k, v)
    num_qo_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    nbytes = workspace_size(num_qo_heads, num_kv_heads, head_dim, max_batch_size=1, device=q.device)
    engine = _Engine(
        _single_workspace(q.device, nbytes),
        "NHD",
        family="decode",
        paged=False,
        use_cuda_graph=False,
        max_batch_size=None,
        max_num_tokens=None,
        max_num_pages=None,
    )
    variant_kwargs.setdefault("kv_dtype", k.dtype)
    knobs, variant = _single_variant("decode", q.dtype, head_dim, variant_kwargs)
    engine.plan(
        None,
        [0, k.shape[0]],
        None,
        None,
        variant=variant,
        num_qo_heads=num_qo_heads,
        num_kv_heads=num_kv_heads,
        page_size=1,
        split_kv=variant_kwargs.get("split_kv", True),
        knobs=knobs,
    )
    result = engine.run(q[None], k, v, None, None, return_lse)
    return (result[0][0], result[1][0]) if return_lse else result[0]


def single_prefill(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, return_lse: bool = False, **variant_kwargs
):
    """One request's prefill: q [q_len, Hq, D], k/v [kv_len, Hkv, D]; mask defaults to 'causal' as in
    BatchPrefillWrapper.plan. variant_kwargs as that plan (the dtypes come from the tensors)."""
    _check_single(q, 3, k, v)
    q_len, num_qo_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    nbytes = workspace_size(
        num_qo_heads,
        num_kv_heads,
        head_dim,
        max_batch_size=1,
        max_num_tokens=max(q_len, 1),
        decode=False,
        device=q.device,
    )
    engine = _Engine(
        _single_workspace(q.device, nbytes),
        "NHD",
        family="prefill",
        paged=False,
        use_cuda_graph=False,
        max_batch_size=None,
        max_num_tokens=None,
        max_num_pages=None,
    )
    variant_kwargs.setdefault("kv_dtype", k.dtype)
    variant_kwargs.setdefault("mask", "causal")
    custom_mask = variant_kwargs.pop("custom_mask", None)
    if custom_mask is not None:
        custom_mask = custom_mask.reshape(-1)
    knobs, variant = _single_variant("prefill", q.dtype, head_dim, variant_kwargs)
    engine.plan(
        [0, q_len],
        [0, k.shape[0]],
        None,
        None,
        variant=variant,
        num_qo_heads=num_qo_heads,
        num_kv_heads=num_kv_heads,
        page_size=1,
        split_kv=variant_kwargs.get("split_kv", True),
        knobs=knobs,
        custom_mask=custom_mask,
    )
    return engine.run(q, k, v, None, None, return_lse)


def _check_single(q, q_dims, k, v):
    for name, t, dims in (("q", q, q_dims), ("k", k, 3), ("v", v, 3)):
        if not isinstance(t, torch.Tensor) or t.dim() != dims:
            raise InvalidArgument(f"{name} must be a {dims}-D tensor")
    if not q.is_cuda:
        raise InvalidArgument(f"q must be a CUDA tensor, got a tensor on {q.device}")


_SINGLE_KEYS = {
    "kv_dtype",
    "mask",
    "window_left",
    "pos",
    "logits_soft_cap",
    "sm_scale",
    "rope_scale",
    "rope_theta",
    "alibi_slopes",
    "k_scale",
    "v_scale",
    "split_kv",
}


def _single_variant(family, q_dtype, head_dim, kwargs):
    unknown = set(kwargs) - _SINGLE_KEYS
    if unknown:
        raise InvalidArgument(f"unknown argument(s) {sorted(unknown)}; accepted: {sorted(_SINGLE_KEYS)}")
    variant = _variant(
        family,
        q_dtype,
        kwargs.get("kv_dtype"),
        head_dim,
        kwargs.get("mask", "none"),
        kwargs.get("pos", "none"),
        kwargs.get("logits_soft_cap"),
    )
    knobs = _knobs(
        kwargs.get("sm_scale"),
        kwargs.get("logits_soft_cap"),
        kwargs.get("rope_scale", 1.0),
        kwargs.get("rope_theta", 1e4),
        kwargs.get("k_scale", 1.0),
        kwargs.get("v_scale", 1.0),
        kwargs.get("window_left", -1),
        kwargs.get("alibi_slopes"),
    )
    return knobs, variant


def __getattr__(name: str):
    # CascadeWrapper lives in kernels/cascade.py (which imports this module); it is offered here too.
    if name == "CascadeWrapper":
        from .cascade import CascadeWrapper

        return CascadeWrapper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
