"""Our side of a bench row: a wrapper planned once for the workload, run on any of its input sets.

Eager timing calls the wrapper's run() (host overhead included, as a user's eager loop pays it);
CUDA-graph timing captures the wrapper's launcher(), the planned kernel launches alone, which is what
a serving loop replays.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from ..verify.cases import DTYPES
from .inputs import BenchInputs
from .workloads import Workload

Call = Callable[[], torch.Tensor]


def prepare_ours(w: Workload, x: BenchInputs, graph: bool) -> Callable[[BenchInputs], Call]:
    """Plan `w` on x's page table; return a maker of one call per input set (they differ only in data,
    so one plan serves all)."""
    wrapper = _cascade(w, x) if w.cascade else _planned(w, x)

    def make(s: BenchInputs) -> Call:
        if graph:
            launch = wrapper.launcher(s.q, s.k, s.v, s.o)
            return lambda: (launch(), s.o)[1]
        if w.kind == "decode" or w.cascade:
            return lambda: wrapper.run(s.q, (s.k, s.v), out=s.o)
        return lambda: wrapper.run(s.q, s.k, s.v, out=s.o)

    return make


def _workspace(nbytes: int, device) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def _planned(w: Workload, x: BenchInputs):
    from ...variants import hooks
    from .. import wrappers

    pages = int(x.kv_indices.numel()) if x.kv_indices is not None else 0
    size = wrappers.workspace_size(
        w.num_qo_heads,
        w.num_kv_heads,
        w.head_dim,
        max_batch_size=len(w.q_lens),
        max_num_tokens=int(x.q.shape[0]),
        max_num_pages=pages,
        decode=w.kind == "decode",
    )
    knobs = dict(
        q_dtype=DTYPES[w.q_dtype],
        kv_dtype=DTYPES[w.kv_dtype],
        mask=w.mask,
        window_left=w.window_left,
        pos=w.pos,
        logits_soft_cap=w.soft_cap or None,
        split_kv=w.split_kv,
        alibi_slopes=hooks.alibi_slopes(w.num_qo_heads).to(x.q.device) if w.pos == "alibi" else None,
    )
    heads = (w.num_qo_heads, w.num_kv_heads, w.head_dim)
    if w.kind == "decode":
        wrapper = wrappers.BatchDecodeWrapper(_workspace(size, x.q.device), "NHD")
        wrapper.plan(
            x.kv_indptr.cpu(), x.kv_indices.cpu(), x.kv_last_page_len.cpu(), *heads, w.page_size, **knobs
        )
        return wrapper
    paged = w.page_size > 0
    wrapper = wrappers.BatchPrefillWrapper(_workspace(size, x.q.device), "NHD", paged=paged)
    paging = (
        dict(kv_indices=x.kv_indices.cpu(), kv_last_page_len=x.kv_last_page_len.cpu(), page_size=w.page_size)
        if paged
        else {}
    )
    wrapper.plan(x.qo_indptr.cpu(), x.kv_indptr.cpu(), *heads, **paging, **knobs)
    return wrapper


def _cascade(w: Workload, x: BenchInputs):
    """Two levels: the shared prefix's pages for all queries as one group, then each request's own."""
    from .. import cascade

    n, prefix_pages = len(w.q_lens), x.prefix_pages
    indptr, indices, last = x.kv_indptr.cpu(), x.kv_indices.cpu(), x.kv_last_page_len.cpu()
    own = torch.cat([indices[int(indptr[r]) + prefix_pages : int(indptr[r + 1])] for r in range(n)])
    own_counts = (indptr[1:] - indptr[:-1] - prefix_pages).tolist()
    shared = (_i32([0, sum(w.q_lens)]), _i32([0, prefix_pages]), indices[:prefix_pages], _i32([w.page_size]))
    mine = (_indptr(w.q_lens), _indptr(own_counts), own, last)
    size = cascade.workspace_size(
        2,
        w.num_qo_heads,
        w.num_kv_heads,
        w.head_dim,
        max_batch_size=n,
        max_num_tokens=sum(w.q_lens),
        max_num_pages=int(indices.numel()),
    )
    wrapper = cascade.CascadeWrapper(2, _workspace(size, x.q.device), "NHD")
    per_level = [list(pair) for pair in zip(shared, mine, strict=True)]
    wrapper.plan(
        *per_level,
        w.num_qo_heads,
        w.num_kv_heads,
        w.head_dim,
        w.page_size,
        q_dtype=DTYPES[w.q_dtype],
        kv_dtype=DTYPES[w.kv_dtype],
        logits_soft_cap=w.soft_cap or None,
        split_kv=w.split_kv,
    )
    return wrapper


def _i32(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int32)


def _indptr(lengths) -> torch.Tensor:
    return _i32([0, *itertools.accumulate(lengths)])
