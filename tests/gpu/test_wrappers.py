"""Plan/run wrappers on the GPU: planned split-KV output against the float32 reference, CUDA-graph replay
for batches other than the captured one, capture refusal, workspace errors, single-request helpers."""

from __future__ import annotations

import math
import random

import pytest
import torch
from flashinfer_build.kernels import accuracy, loader, reference, wrappers
from flashinfer_build.kernels.checks import InvalidArgument

pytestmark = pytest.mark.gpu

HQ, HKV, D, PAGE = 32, 8, 128, 16
DECODE, PREFILL_CAUSAL, MERGE = (
    "decode_sm90a_bf16_hd128",
    "prefill_sm90a_bf16_hd128_causal",
    "merge_sm90a_bf16",
)


def require(*variant_ids: str) -> None:
    """Skip unless a GPU is present and a pack that fits it holds every variant (any arch)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    try:
        packs = [p for p in loader.discover_packs() if p.fits(torch.cuda.get_device_capability())]
    except loader.PackError as e:
        pytest.skip(str(e))
    held = {vid.replace(f"_{p.arch}_", "_sm90a_") for p in packs for vid in p.variants}
    missing = [vid for vid in variant_ids if vid not in held]
    if missing:
        pytest.skip(f"no built pack holds {', '.join(missing)}")


def paged_cache(kv_lens, layout="NHD", spare=5, seed=None):
    """k/v caches with shuffled page ids, and the index arrays on the host (as plan prefers them)."""
    rng = random.Random(seed)
    pages = [math.ceil(n / PAGE) for n in kv_lens]
    ids = list(range(sum(pages) + spare))
    rng.shuffle(ids)
    indptr = [0]
    for n in pages:
        indptr.append(indptr[-1] + n)
    last = [n - (p - 1) * PAGE if p else 0 for n, p in zip(kv_lens, pages, strict=True)]
    shape = (len(ids), PAGE, HKV, D) if layout == "NHD" else (len(ids), HKV, PAGE, D)
    k = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    as_i32 = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    return k, v, as_i32(indptr), as_i32(ids[: indptr[-1]]), as_i32(last)


def reference_decode(q, k, v, indptr, indices, last, layout, dtype):
    outs, lses = [], []
    for r in range(q.shape[0]):
        kr = reference.gather_paged(k, indptr, indices.cuda(), last, r, layout)
        vr = reference.gather_paged(v, indptr, indices.cuda(), last, r, layout)
        o, lse = reference.attention(q[r : r + 1], kr, vr, dtype=dtype)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def assert_accurate(o, lse, ref, low):
    empty = torch.isinf(ref[1])
    o_cmp = accuracy.compare(o, ref[0], low[0].float(), empty_rows=empty)
    lse_cmp = accuracy.compare(lse, ref[1], low[1].float(), empty_rows=empty, empty_value=float("-inf"))
    assert o_cmp.passed, f"o: {o_cmp.problem()} (rel err {o_cmp.rel_err:.3g})"
    assert lse_cmp.passed, f"lse: {lse_cmp.problem()}"


def workspace(nbytes):
    return torch.empty(nbytes, dtype=torch.uint8, device="cuda")


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_planned_split_decode_matches_reference(layout):
    require(DECODE, MERGE)
    rng = random.Random()
    kv_lens = [32768 + rng.randint(0, 15)] + [rng.randint(0, 700) for _ in range(30)] + [0, 1, 16]
    rng.shuffle(kv_lens)
    k, v, indptr, indices, last = paged_cache(kv_lens, layout)
    size = wrappers.workspace_size(HQ, HKV, D, max_batch_size=64, max_num_pages=int(indices.numel()))
    w = wrappers.BatchDecodeWrapper(workspace(size), layout)
    w.plan(indptr, indices, last, HQ, HKV, D, PAGE)
    assert w.plan_info.split, "the 32k request is split across the GPU"
    q = torch.randn(len(kv_lens), HQ, D, device="cuda", dtype=torch.bfloat16)
    o = accuracy.poisoned_like(q)
    lse = accuracy.poison_(torch.empty(q.shape[:2], device="cuda"))
    w.run(q, (k, v), out=o, lse=lse)
    torch.cuda.synchronize()
    ref = reference_decode(q, k, v, indptr.cuda(), indices, last.cuda(), layout, torch.float32)
    low = reference_decode(q, k, v, indptr.cuda(), indices, last.cuda(), layout, torch.bfloat16)
    assert_accurate(o, lse, ref, low)


@pytest.mark.parametrize("paged", [True, False])
def test_planned_split_prefill_matches_reference(paged):
    require(PREFILL_CAUSAL, MERGE)
    rng = random.Random()
    q_lens = [rng.randint(1, 40), 0, rng.randint(100, 300)]
    kv_lens = [20_000 + rng.randint(0, 99), 7, q_lens[2] + rng.randint(0, 500)]
    qo_indptr = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(q_lens), HQ, D, device="cuda", dtype=torch.bfloat16)
    if paged:
        k, v, indptr, indices, last = paged_cache(kv_lens)
        per_request = [
            (
                reference.gather_paged(k, indptr, indices.cuda(), last, r),
                reference.gather_paged(v, indptr, indices.cuda(), last, r),
            )
            for r in range(len(kv_lens))
        ]
        paging = dict(kv_indices=indices, kv_last_page_len=last, page_size=PAGE)
    else:
        k = torch.randn(sum(kv_lens), HKV, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        indptr = torch.tensor([0, *torch.tensor(kv_lens).cumsum(0).tolist()], dtype=torch.int32)
        per_request = [
            (k[indptr[r] : indptr[r + 1]], v[indptr[r] : indptr[r + 1]]) for r in range(len(kv_lens))
        ]
        paging = {}
    size = wrappers.workspace_size(
        HQ,
        HKV,
        D,
        max_batch_size=3,
        max_num_tokens=sum(q_lens),
        max_num_pages=int(indices.numel()) if paged else 0,
        decode=False,
    )
    w = wrappers.BatchPrefillWrapper(workspace(size), paged=paged)
    w.plan(qo_indptr, indptr, HQ, HKV, D, mask="causal", **paging)
    assert w.plan_info.split, "the short query over 20k keys is split"
    o = accuracy.poisoned_like(q)
    lse = accuracy.poison_(torch.empty(q.shape[:2], device="cuda"))
    w.run(q, k, v, out=o, lse=lse)
    torch.cuda.synchronize()
    refs = {
        dtype: [
            reference.attention(
                q[qo_indptr[r] : qo_indptr[r + 1]], *per_request[r], mask="causal", dtype=dtype
            )
            for r in range(3)
        ]
        for dtype in (torch.float32, torch.bfloat16)
    }
    ref, low = (
        [torch.cat([x[i] for x in refs[dt]]) for i in range(2)] for dt in (torch.float32, torch.bfloat16)
    )
    assert_accurate(o, lse, ref, low)


def test_cuda_graph_replays_for_other_batches():
    require(DECODE, MERGE)
    max_batch, max_pages = 48, 48 * (40_000 // PAGE + 2)
    size = wrappers.workspace_size(HQ, HKV, D, max_batch_size=max_batch, max_num_pages=max_pages)
    w = wrappers.BatchDecodeWrapper(
        workspace(size), use_cuda_graph=True, max_batch_size=max_batch, max_num_pages=max_pages
    )
    rng = random.Random()
    batches = [
        [rng.randint(1, 900) for _ in range(20)],  # captured, planned unsplit
        [40_000] + [rng.randint(0, 600) for _ in range(9)],  # skewed: split
        [rng.randint(2000, 9000) for _ in range(max_batch)],  # the bound
        [0, 33, 31_000],  # tiny batch with an empty request
    ]
    q_static = torch.zeros(max_batch, HQ, D, device="cuda", dtype=torch.bfloat16)
    out = torch.zeros_like(q_static)
    lse = torch.zeros(max_batch, HQ, device="cuda")
    cache_pages = max_pages + 8
    k = torch.randn(cache_pages, PAGE, HKV, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    graph = None
    splits = []
    for kv_lens in batches:
        pages = [math.ceil(n / PAGE) for n in kv_lens]
        ids = rng.sample(range(cache_pages), sum(pages))
        indptr = torch.tensor([0, *torch.tensor(pages).cumsum(0).tolist()], dtype=torch.int32)
        last = torch.tensor(
            [n - (p - 1) * PAGE if p else 0 for n, p in zip(kv_lens, pages, strict=True)], dtype=torch.int32
        )
        indices = torch.tensor(ids, dtype=torch.int32)
        w.plan(indptr, indices, last, HQ, HKV, D, PAGE, split_kv=graph is not None)  # capture unsplit
        splits.append(w.plan_info.split)
        b = len(kv_lens)
        q_static[:b] = torch.randn(b, HQ, D, device="cuda", dtype=torch.bfloat16)
        accuracy.poison_(out[:b])
        accuracy.poison_(lse[:b])
        if graph is None:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                w.run(q_static, (k, v), out=out, lse=lse)  # warm-up: params built outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            accuracy.poison_(out[:b])
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                w.run(q_static, (k, v), out=out, lse=lse)
        graph.replay()
        torch.cuda.synchronize()
        args = (q_static[:b], k, v, indptr.cuda(), indices, last.cuda(), "NHD")
        assert_accurate(
            out[:b], lse[:b], reference_decode(*args, torch.float32), reference_decode(*args, torch.bfloat16)
        )
    assert splits[1] and not splits[0], "the replays cover both split and unsplit plans"


def test_back_to_back_split_runs_read_inputs_written_just_before():
    """Graph replays of (a kernel writes q, split decode + merge) several times over, one workspace:
    on sm_90 each launch may start while the one before runs (launch.cuh), so a q read before the
    wait, or partial states of run i + 1 written while run i's merge reads them, would show here."""
    require(DECODE, MERGE)
    rng = random.Random()
    kv_lens = [16384 + rng.randint(0, 15), rng.randint(1, 500), 3]
    k, v, indptr, indices, last = paged_cache(kv_lens)
    size = wrappers.workspace_size(HQ, HKV, D, max_batch_size=4, max_num_pages=int(indices.numel()))
    w = wrappers.BatchDecodeWrapper(workspace(size))
    w.plan(indptr, indices, last, HQ, HKV, D, PAGE)
    assert w.plan_info.split
    runs = 4
    sources = [torch.randn(len(kv_lens), HQ, D, device="cuda", dtype=torch.bfloat16) for _ in range(runs)]
    qs = [accuracy.poisoned_like(x) for x in sources]
    outs = [accuracy.poisoned_like(x) for x in sources]
    lses = [accuracy.poison_(torch.empty(x.shape[:2], device="cuda")) for x in sources]
    launches = [w.launcher(q, k, v, o, lse) for q, o, lse in zip(qs, outs, lses, strict=True)]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for src, q, launch in zip(sources, qs, launches, strict=True):
            q.copy_(src)
            launch()
    graph.replay()
    torch.cuda.synchronize()
    for src, o, lse in zip(sources, outs, lses, strict=True):
        args = (src, k, v, indptr.cuda(), indices, last.cuda(), "NHD")
        ref, low = (reference_decode(*args, dtype) for dtype in (torch.float32, torch.bfloat16))
        assert_accurate(o, lse, ref, low)


def test_run_refuses_capture_without_graph_mode():
    require(DECODE, MERGE)
    k, v, indptr, indices, last = paged_cache([100, 200])
    w = wrappers.BatchDecodeWrapper(workspace(wrappers.workspace_size(HQ, HKV, D, max_batch_size=2)))
    w.plan(indptr, indices, last, HQ, HKV, D, PAGE)
    q = torch.randn(2, HQ, D, device="cuda", dtype=torch.bfloat16)
    w.run(q, (k, v))
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="use_cuda_graph=True"), torch.cuda.graph(graph):
        w.run(q, (k, v))


def test_workspace_too_small_and_bad_plans_are_clear_errors():
    require(DECODE, MERGE)
    k, v, indptr, indices, last = paged_cache([5000] * 4)
    w = wrappers.BatchDecodeWrapper(workspace(1024))
    with pytest.raises(InvalidArgument, match="workspace holds 1024 bytes but this batch needs"):
        w.plan(indptr, indices, last, HQ, HKV, D, PAGE)
    w = wrappers.BatchDecodeWrapper(workspace(wrappers.workspace_size(HQ, HKV, D, max_batch_size=4)))
    with pytest.raises(InvalidArgument, match="kv_last_page_len must lie in"):
        w.plan(indptr, indices, torch.tensor([0, 1, 2, 3], dtype=torch.int32), HQ, HKV, D, PAGE)
    with pytest.raises(InvalidArgument, match="window_left=5 with mask='none'"):
        w.plan(indptr, indices, last, HQ, HKV, D, PAGE, window_left=5)
    with pytest.raises(ValueError, match="causal"):
        w.plan(indptr, indices, last, HQ, HKV, D, PAGE, mask="causal")
    graph_w = wrappers.BatchDecodeWrapper(
        workspace(wrappers.workspace_size(HQ, HKV, D, max_batch_size=2, max_num_pages=2000)),
        use_cuda_graph=True,
        max_batch_size=2,
        max_num_pages=2000,
    )
    with pytest.raises(ValueError, match="batch size 4 exceeds the wrapper's max batch size 2"):
        graph_w.plan(indptr, indices, last, HQ, HKV, D, PAGE)


def test_single_helpers_match_reference():
    require(DECODE, PREFILL_CAUSAL, MERGE)
    q = torch.randn(HQ, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(30_000, HKV, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    o, lse = wrappers.single_decode(q, k, v, return_lse=True)
    ref = reference.attention(q[None], k, v)
    low = reference.attention(q[None], k, v, dtype=torch.bfloat16)
    assert_accurate(o[None], lse[None], ref, low)
    qp = torch.randn(77, HQ, D, device="cuda", dtype=torch.bfloat16)
    o, lse = wrappers.single_prefill(qp, k[:5000], v[:5000], return_lse=True)
    ref = reference.attention(qp, k[:5000], v[:5000], mask="causal")
    low = reference.attention(qp, k[:5000], v[:5000], mask="causal", dtype=torch.bfloat16)
    assert_accurate(o, lse, ref, low)
