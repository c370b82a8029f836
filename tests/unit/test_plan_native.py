"""The C planner (kernels/csrc/plan/planner.cpp) against its specification, kernels/scheduler.py: on
random paged decode batches both write the same staging bytes and report the same plan; bad input gives
the Python path's errors. Built here with the host C++ compiler (packs link the same source)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from flashinfer_build.kernels import abi, native_plan, scheduler, wrapper_engine
from flashinfer_build.kernels.checks import InvalidArgument
from flashinfer_build.kernels.scheduler import CostModel, KernelShape
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=1000)
CHEAP_SPLITS = CostModel(item_overhead=1.0, merge_launch=0.0, min_gain=0.0)


def paged(kv_lens, page_size, rng):
    pages = [-(-n // page_size) for n in kv_lens]
    indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
    # requests without pages may carry any last-page length: the planner must ignore it
    last = np.array(
        [
            n - (p - 1) * page_size if p else int(rng.integers(0, 3))
            for n, p in zip(kv_lens, pages, strict=True)
        ]
    )
    return indptr, last.astype(np.int32), rng.permutation(int(indptr[-1]) + 3).astype(np.int32)


def problem(batch, kernel, hq, hkv, graph, host_pages, extra):
    group = hq // hkv
    if graph:
        cap = scheduler.capacity(
            max_batch=max(batch + extra, 1),
            max_tokens=max(batch + extra, 1),
            group=group,
            cta_tile_q=kernel.cta_tile_q,
            num_sms=kernel.num_sms,
            decode=True,
            max_pages=host_pages + extra,
        )
    else:
        n = max(batch, 1)
        cap = scheduler.capacity(
            max_batch=n,
            max_tokens=n,
            group=group,
            cta_tile_q=kernel.cta_tile_q,
            num_sms=kernel.num_sms,
            decode=True,
            max_pages=host_pages,
        )
    return scheduler.layout(cap, hq, 128)


def python_staging(lay, kv_lens, indptr, last, indices, graph, **kw):
    """What Engine.plan's Python path writes: scheduler.plan, then pack_metadata (graph: padded arrays)."""
    p = scheduler.plan(None, kv_lens, capacity=lay.capacity, fixed_grid=graph, **kw)
    rows = lay.capacity.batch + 1 if graph else indptr.shape[0]

    def pad(values, n):
        fill = values[-1] if values.shape[0] else 0
        return np.concatenate([values, np.full(n - values.shape[0], fill, np.int32)])

    arrays = {"kv_indptr": pad(indptr, rows), "kv_last_page_len": pad(last, rows - 1)}
    if indices is not None:
        arrays["kv_indices"] = indices
    host = np.full(lay.metadata_bytes // 4, -7, np.int32)
    nbytes = scheduler.pack_metadata(p, lay, host, arrays)
    return p, host, nbytes


def native_staging(
    planner,
    lay,
    kernel,
    indptr,
    last,
    indices,
    num_indices,
    graph,
    *,
    hq,
    hkv,
    page,
    window,
    split,
    kv_bytes,
    cost,
):
    cfg = native_plan.config(
        lay,
        kernel,
        num_qo_heads=hq,
        num_kv_heads=hkv,
        page_size=page,
        window_left=window,
        split_kv=split,
        fixed_grid=graph,
        kv_bytes=kv_bytes,
        cost=cost,
    )
    host = np.full(lay.metadata_bytes // 4, -7, np.int32)
    result = abi.PlanResult()
    ptr = None if indices is None else indices.ctypes.data
    err = planner.plan(
        ctypes.byref(cfg),
        indptr.ctypes.data,
        last.ctypes.data,
        ptr,
        indptr.shape[0] - 1,
        num_indices,
        host.ctypes.data,
        ctypes.byref(result),
    )
    return err, result, host, cfg


kernels = st.builds(
    KernelShape,
    num_sms=st.integers(1, 160),
    ctas_per_sm=st.integers(1, 4),
    cta_tile_q=st.sampled_from([32, 64]),
    cta_tile_kv=st.sampled_from([16, 32, 64]),
)


@SLOW
@given(
    kv=st.one_of(
        st.lists(st.integers(0, 100_000), min_size=0, max_size=512),
        st.lists(st.sampled_from([0, 1, 15, 16, 17, 512, 4096, 32768]), min_size=1, max_size=300),
    ),
    kernel=kernels,
    heads=st.sampled_from([(32, 8), (32, 32), (32, 1), (8, 2), (6, 3), (1, 1), (64, 4)]),
    page=st.sampled_from([1, 5, 16, 48, 64]),
    window=st.one_of(st.just(-1), st.integers(0, 5000)),
    split=st.booleans(),
    graph=st.booleans(),
    host_indices=st.booleans(),
    kv_bytes=st.sampled_from([1, 2]),
    cost=st.sampled_from([scheduler.DEFAULT_COST, CHEAP_SPLITS, scheduler.PREFILL_COST]),
    extra=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_native_plan_writes_the_python_plans_bytes(
    host_planner, kv, kernel, heads, page, window, split, graph, host_indices, kv_bytes, cost, extra, seed
):
    hq, hkv = heads
    rng = np.random.default_rng(seed)
    indptr, last, all_indices = paged(kv, page, rng)
    indices = all_indices if host_indices else None
    num_indices = all_indices.shape[0]
    lay = problem(len(kv), kernel, hq, hkv, graph, num_indices if (host_indices or graph) else 0, extra)
    kw = dict(
        num_qo_heads=hq, num_kv_heads=hkv, page_size=page, kernel=kernel, split_kv=split, kv_bytes=kv_bytes
    )
    mask = {"mask": "sliding_window", "window_left": window} if window >= 0 else {}
    p, want, want_bytes = python_staging(lay, kv, indptr, last, indices, graph, cost=cost, **mask, **kw)
    event(f"split: {p.split}, sorted: {p.num_items > 1 and bool((p.work[:-1, 0] > p.work[1:, 0]).any())}")

    err, r, got, cfg = native_staging(
        host_planner, lay, kernel, indptr, last, indices, num_indices, graph,
        hq=hq, hkv=hkv, page=page, window=window, split=split, kv_bytes=kv_bytes, cost=cost,
    )  # fmt: skip
    assert err == 0, wrapper_engine.native_error(r)
    np.testing.assert_array_equal(got, want)  # every staging byte, untouched ones included
    assert r.upload_bytes == want_bytes
    assert r.kv_used == indptr[-1]
    q = native_plan.NativePlan(r, got, cfg).to_plan()
    assert (q.num_items, q.chunk_size, q.num_partial_rows, q.num_tokens) == (
        p.num_items,
        p.chunk_size,
        p.num_partial_rows,
        p.num_tokens,
    )
    assert q.estimate == p.estimate  # floats equal exactly: same operations in the same order
    np.testing.assert_array_equal(q.work, p.work)
    np.testing.assert_array_equal(q.merge_indptr, p.merge_indptr)
    np.testing.assert_array_equal(q.merge_indices, p.merge_indices)


def test_native_plan_splits_the_skewed_batch(host_planner):
    """A case that must split (so the property test's equality is not only over unsplit plans)."""
    kernel = KernelShape(num_sms=132, ctas_per_sm=2, cta_tile_q=64, cta_tile_kv=64)
    kv = [32768] + [512] * 255
    rng = np.random.default_rng(0)
    indptr, last, indices = paged(kv, 16, rng)
    lay = problem(256, kernel, 32, 8, False, 0, 0)
    err, r, host, cfg = native_staging(
        host_planner, lay, kernel, indptr, last, None, indices.shape[0], False,
        hq=32, hkv=8, page=16, window=-1, split=True, kv_bytes=2, cost=scheduler.DEFAULT_COST,
    )  # fmt: skip
    assert err == 0 and r.chunk_size > 0 and r.num_items > 256
    p = scheduler.plan(
        None, kv, num_qo_heads=32, num_kv_heads=8, page_size=16, kernel=kernel, capacity=lay.capacity
    )
    assert r.chunk_size == p.chunk_size and r.num_candidates == len(p.estimate.candidates)


@pytest.mark.parametrize(
    "indptr, last, num_indices, message",
    [
        ([1, 2], [1], 4, "kv_indptr must start at 0"),
        ([0, 3, 1], [1, 1], 4, "kv_indptr must be non-decreasing"),
        ([0, 2, 5], [1, 1], 4, r"kv_indptr\[-1\] = 5 exceeds the 4 entries"),
        ([0, 2, 3], [1, 0], 4, r"kv_last_page_len must lie in \[1, page_size = 16\]"),
        ([0, 2, 3], [17, 1], 4, "kv_last_page_len must lie in"),
    ],
)
def test_native_plan_rejects_bad_index_arrays_as_python_does(
    host_planner, indptr, last, num_indices, message
):
    kernel = KernelShape(num_sms=132, ctas_per_sm=2, cta_tile_q=64, cta_tile_kv=64)
    indptr, last = np.array(indptr, np.int32), np.array(last, np.int32)
    with pytest.raises(InvalidArgument, match=message):
        wrapper_engine.paged_lengths(indptr, last, 16, num_indices)
    lay = problem(len(last), kernel, 32, 8, False, 0, 0)
    err, r, _, _ = native_staging(
        host_planner, lay, kernel, indptr, last, None, num_indices, False,
        hq=32, hkv=8, page=16, window=-1, split=True, kv_bytes=2, cost=scheduler.DEFAULT_COST,
    )  # fmt: skip
    assert err != 0
    with pytest.raises(InvalidArgument, match=message):
        raise wrapper_engine.native_error(r)


def test_native_plan_rejects_a_batch_over_the_graph_bound(host_planner):
    kernel = KernelShape(num_sms=132, ctas_per_sm=2, cta_tile_q=64, cta_tile_kv=64)
    lay = problem(4, kernel, 32, 8, True, 0, 0)  # bound: batch 4
    indptr, last = np.arange(6, dtype=np.int32), np.ones(5, np.int32)
    with pytest.raises(ValueError, match="batch size 5 exceeds the wrapper's max batch size 4"):
        scheduler.plan(
            None, [1] * 5, num_qo_heads=32, num_kv_heads=8, page_size=16, kernel=kernel, capacity=lay.capacity
        )
    err, r, _, _ = native_staging(
        host_planner, lay, kernel, indptr, last, None, 5, True,
        hq=32, hkv=8, page=16, window=-1, split=True, kv_bytes=2, cost=scheduler.DEFAULT_COST,
    )  # fmt: skip
    with pytest.raises(ValueError, match="batch size 5 exceeds the wrapper's max batch size 4"):
        raise wrapper_engine.native_error(r)


def prefill_staging(planner, lay, kernel, qo_ptr, kv_ptr, last, indices, num_indices, graph, mask, **kw):
    cfg = native_plan.config(lay, kernel, fixed_grid=graph, mask=mask, **kw)
    host = np.full(lay.metadata_bytes // 4, -7, np.int32)
    result = abi.PlanResult()
    ptrs = [None if a is None else a.ctypes.data for a in (qo_ptr, kv_ptr, last, indices)]
    err = planner.prefill(
        ctypes.byref(cfg), *ptrs, qo_ptr.shape[0] - 1, num_indices, host.ctypes.data, ctypes.byref(result)
    )
    return err, result, host, cfg


@SLOW
@given(
    lens=st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 60_000)) | st.tuples(st.just(1), st.integers(0, 5000)),
        min_size=0,
        max_size=64,
    ),
    kernel=st.builds(
        KernelShape,
        num_sms=st.integers(1, 160),
        ctas_per_sm=st.integers(1, 4),
        cta_tile_q=st.sampled_from([4, 16, 64, 128]),
        cta_tile_kv=st.sampled_from([16, 64]),
    ),
    heads=st.sampled_from([(32, 8), (32, 32), (32, 1), (8, 2), (6, 3)]),
    page=st.sampled_from([0, 1, 16, 48]),  # 0: ragged KV
    mask=st.sampled_from(["none", "causal", "sliding_window", "custom"]),
    window=st.integers(0, 3000),
    split=st.booleans(),
    graph=st.booleans(),
    host_indices=st.booleans(),
    cost=st.sampled_from([scheduler.PREFILL_COST, CHEAP_SPLITS]),
    extra=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_native_prefill_plan_writes_the_python_plans_bytes(
    host_planner, lens, kernel, heads, page, mask, window, split, graph, host_indices, cost, extra, seed
):
    hq, hkv = heads
    rng = np.random.default_rng(seed)
    qo = [q for q, _ in lens]
    kv = [max(k, q) for q, k in lens]  # query length <= KV length
    qo_ptr = np.concatenate([[0], np.cumsum(qo)]).astype(np.int32)
    tokens = int(qo_ptr[-1])
    if page:
        kv_ptr, last, all_indices = paged(kv, page, rng)
    else:
        kv_ptr, last = np.concatenate([[0], np.cumsum(kv)]).astype(np.int32), None
        all_indices = np.zeros(0, np.int32)
    indices = all_indices if (host_indices and page) else None
    num_indices = all_indices.shape[0]
    group, batch = hq // hkv, len(lens)
    host_pages = num_indices if (indices is not None or (graph and page)) else 0
    bound = (lambda n: max(n + extra, 1)) if graph else (lambda n: max(n, 1))
    cap = scheduler.capacity(
        max_batch=bound(batch),
        max_tokens=bound(tokens),
        group=group,
        cta_tile_q=kernel.cta_tile_q,
        num_sms=kernel.num_sms,
        decode=False,
        max_pages=host_pages + (extra if graph else 0),
    )
    lay = scheduler.layout(cap, hq, 128)
    window_left = window if mask == "sliding_window" else -1
    p = scheduler.plan(
        qo, kv, num_qo_heads=hq, num_kv_heads=hkv, page_size=max(page, 1), kernel=kernel, mask=mask,
        window_left=window_left, split_kv=split, capacity=cap, fixed_grid=graph, cost=cost,
    )  # fmt: skip
    rows = cap.batch + 1 if graph else batch + 1

    def pad(values, n):
        fill = values[-1] if values.shape[0] else 0
        return np.concatenate([values, np.full(n - values.shape[0], fill, np.int32)])

    arrays = {"kv_indptr": pad(kv_ptr, rows)}
    if page:
        arrays["kv_last_page_len"] = pad(last, rows - 1)
    if indices is not None:
        arrays["kv_indices"] = indices
    arrays["qo_indptr"] = pad(qo_ptr, rows)
    want = np.full(lay.metadata_bytes // 4, -7, np.int32)
    want_bytes = scheduler.pack_metadata(p, lay, want, arrays)
    event(f"split: {p.split}, one tile per request: {p.work.shape[0] == batch}")

    kw = dict(num_qo_heads=hq, num_kv_heads=hkv, page_size=max(page, 1), window_left=window_left)
    err, r, got, cfg = prefill_staging(
        host_planner, lay, kernel, qo_ptr, kv_ptr, last, indices, num_indices, graph, mask,
        split_kv=split, kv_bytes=2, cost=cost, **kw,
    )  # fmt: skip
    assert err == 0, r.error
    np.testing.assert_array_equal(got, want)
    assert r.upload_bytes == want_bytes
    q = native_plan.NativePlan(r, got, cfg).to_plan()
    assert (q.num_items, q.chunk_size, q.num_partial_rows, q.num_tokens) == (
        p.num_items,
        p.chunk_size,
        p.num_partial_rows,
        p.num_tokens,
    )
    assert q.estimate == p.estimate
    np.testing.assert_array_equal(q.merge_indices, p.merge_indices)
