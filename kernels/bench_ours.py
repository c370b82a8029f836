"""Our side of a bench row: a wrapper planned once for the workload, run on any of its input sets."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .bench_baselines import Unsupported
from .bench_inputs import BenchInputs
from .bench_workloads import Workload
from .verify_cases import DTYPES


def prepare_ours(w: Workload, x: BenchInputs, graph: bool) -> Callable[[BenchInputs], torch.Tensor]:
    """Plan `w` on x's page table and return run(inputs) -> inputs.o. The plan is shared by every input
    set: they differ only in data. graph=True builds the wrapper for CUDA-graph capture."""
    from . import wrappers

    if w.cascade:
        return _prepare_cascade(w, x, graph)
    pages = int(x.kv_indices.numel()) if x.kv_indices is not None else 0
    size = wrappers.workspace_size(
        w.num_qo_heads, w.num_kv_heads, w.head_dim, max_batch_size=len(w.q_lens),
        max_num_tokens=int(x.q.shape[0]), max_num_pages=pages, decode=w.kind == "decode",
    )
    workspace = torch.empty(size, dtype=torch.uint8, device=x.q.device)
    knobs = _knobs(w, x)
    bounds = dict(use_cuda_graph=graph, max_batch_size=len(w.q_lens)) if graph else {}
    if w.kind == "decode":
        if graph:
            bounds["max_num_pages"] = pages
        wrapper = wrappers.BatchDecodeWrapper(workspace, "NHD", **bounds)
        heads = (w.num_qo_heads, w.num_kv_heads, w.head_dim)
        wrapper.plan(x.kv_indptr, x.kv_indices, x.kv_last_page_len, *heads, w.page_size, mask=w.mask, **knobs)
        return lambda s: _run_decode(wrapper, s)
    paged = w.page_size > 0
    if graph:
        bounds["max_num_tokens"] = int(x.q.shape[0])
        if paged:
            bounds["max_num_pages"] = pages
    wrapper = wrappers.BatchPrefillWrapper(workspace, "NHD", paged=paged, **bounds)
    paging = dict(kv_indices=x.kv_indices, kv_last_page_len=x.kv_last_page_len, page_size=w.page_size)
    wrapper.plan(x.qo_indptr, x.kv_indptr, w.num_qo_heads, w.num_kv_heads, w.head_dim, mask=w.mask,
                 **(paging if paged else {}), **knobs)
    return lambda s: _run_prefill(wrapper, s)


def _run_decode(wrapper, s: BenchInputs) -> torch.Tensor:
    wrapper.run(s.q, (s.k, s.v), out=s.o)
    return s.o


def _run_prefill(wrapper, s: BenchInputs) -> torch.Tensor:
    wrapper.run(s.q, s.k, s.v, out=s.o)
    return s.o


def _knobs(w: Workload, x: BenchInputs) -> dict:
    from ..variants import hooks

    return dict(
        q_dtype=DTYPES[w.q_dtype], kv_dtype=DTYPES[w.kv_dtype], window_left=w.window_left, pos=w.pos,
        logits_soft_cap=w.soft_cap or None, split_kv=w.split_kv,
        alibi_slopes=hooks.alibi_slopes(w.num_qo_heads).to(x.q.device) if w.pos == "alibi" else None,
    )


def _prepare_cascade(w: Workload, x: BenchInputs, graph: bool):
    from . import wrappers

    if not hasattr(wrappers, "CascadeWrapper"):
        raise Unsupported("kernels/wrappers.py has no CascadeWrapper yet")
    raise Unsupported("cascade bench is not wired to CascadeWrapper yet")
