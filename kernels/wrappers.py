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

import torch

from . import scheduler
from .checks import InvalidArgument
from .wrapper_engine import (
    Engine,
    check_heads,
    make_knobs,
    split_cache,
    variant_for,
)


class _BatchWrapper:
    """What the batch wrappers share around their Engine."""

    _engine: Engine

    @property
    def plan_info(self) -> scheduler.Plan:
        """The scheduler's plan of the last plan() call (work list, chunk size, cost estimate)."""
        return self._engine.plan_info

    def launcher(self, q, k, v, out, lse=None):
        """run()'s kernel launches for these tensors as a closure, valid until the next plan: what a
        benchmark captures in a CUDA graph to time the kernels without host overhead."""
        return self._engine.launcher(q, k, v, out, lse)


class BatchDecodeWrapper(_BatchWrapper):
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
        self._engine = Engine(
            workspace,
            kv_layout,
            family="decode",
            paged=True,
            use_cuda_graph=use_cuda_graph,
            max_batch_size=max_batch_size,
            max_num_tokens=None,
            max_num_pages=max_num_pages,
        )

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
        """Plan a batch. kv_indptr [batch + 1] (pages) and kv_last_page_len [batch]: int32 CPU tensors,
        lists or arrays (CUDA tensors work too, at the price of a device-to-host copy). kv_indices
        [kv_indptr[-1]]: an int32 CUDA tensor is read in place (the fast path; a CUDA-graph wrapper
        copies it into its workspace), host ones are copied into the workspace with the plan."""
        check_heads(num_qo_heads, num_kv_heads)
        variant = variant_for("decode", q_dtype, kv_dtype, head_dim, mask, pos, logits_soft_cap)
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
            knobs=make_knobs(
                sm_scale, logits_soft_cap, rope_scale, rope_theta, k_scale, v_scale, window_left, alibi_slopes
            ),
        )

    def run(self, q: torch.Tensor, paged_kv_cache, *, out=None, lse=None, return_lse: bool = False):
        """q [batch, Hq, D]; paged_kv_cache = (k_cache, v_cache), each [pages, page_size, Hkv, D] (NHD) or
        [pages, Hkv, page_size, D] (HND). Returns out (and lse [batch, Hq] float32 with return_lse)."""
        k, v = split_cache(paged_kv_cache)
        return self._engine.run(q, k, v, out, lse, return_lse)


class BatchPrefillWrapper(_BatchWrapper):
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
        self._engine = Engine(
            workspace,
            kv_layout,
            family="prefill",
            paged=paged,
            use_cuda_graph=use_cuda_graph,
            max_batch_size=max_batch_size,
            max_num_tokens=max_num_tokens,
            max_num_pages=max_num_pages,
        )

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
        every request's [q_len, kv_len] mask flattened and concatenated. Index arrays as for
        BatchDecodeWrapper.plan."""
        check_heads(num_qo_heads, num_kv_heads)
        if not self._engine.paged and (kv_indices is not None or kv_last_page_len is not None):
            raise InvalidArgument("a ragged-KV wrapper (paged=False) takes no kv_indices or kv_last_page_len")
        variant = variant_for("prefill", q_dtype, kv_dtype, head_dim, mask, pos, logits_soft_cap)
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
            knobs=make_knobs(
                sm_scale, logits_soft_cap, rope_scale, rope_theta, k_scale, v_scale, window_left, alibi_slopes
            ),
            custom_mask=custom_mask,
        )

    def run(self, q: torch.Tensor, k, v=None, *, out=None, lse=None, return_lse: bool = False):
        """q [total_q, Hq, D]. Paged: k = (k_cache, v_cache), or the two caches as k and v. Ragged: k, v
        [total_kv, Hkv, D]. Returns out (and lse [total_q, Hq] float32 with return_lse)."""
        if v is None:
            k, v = split_cache(k)
        return self._engine.run(q, k, v, out, lse, return_lse)


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
    engine = Engine(
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
    engine = Engine(
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
    variant = variant_for(
        family,
        q_dtype,
        kwargs.get("kv_dtype"),
        head_dim,
        kwargs.get("mask", "none"),
        kwargs.get("pos", "none"),
        kwargs.get("logits_soft_cap"),
    )
    kn = make_knobs(
        kwargs.get("sm_scale"),
        kwargs.get("logits_soft_cap"),
        kwargs.get("rope_scale", 1.0),
        kwargs.get("rope_theta", 1e4),
        kwargs.get("k_scale", 1.0),
        kwargs.get("v_scale", 1.0),
        kwargs.get("window_left", -1),
        kwargs.get("alibi_slopes"),
    )
    return kn, variant


def __getattr__(name: str):
    # CascadeWrapper lives in kernels/cascade.py (which imports this module); it is offered here too.
    if name == "CascadeWrapper":
        from .cascade import CascadeWrapper

        return CascadeWrapper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
