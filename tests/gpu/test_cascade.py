"""CascadeWrapper on the GPU: shared-prefix levels merged by log-sum-exp equal plain attention over the
concatenated KV (the float32 reference, and our plain paged decode on the same pages)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from flashinfer_build.kernels import accuracy, cascade, ops, reference, wrappers
from flashinfer_build.kernels.checks import InvalidArgument
from flashinfer_build.variants import parse_id
from test_wrappers import HKV, HQ, MERGE, PAGE, D, assert_accurate, require

pytestmark = pytest.mark.gpu

DECODE, PREFILL = "decode_sm90a_bf16_hd128", "prefill_sm90a_bf16_hd128"


def _pages(n, pool):
    return [pool.pop() for _ in range(math.ceil(n / PAGE))]


def _last(n):
    return n - (math.ceil(n / PAGE) - 1) * PAGE if n else 0


def _plan_random_cascade(levels, samples, rng):
    """A random cascade of 3 prefix groups of `samples` (min, max) requests each: the wrapper planned on
    shuffled pages, the caches, and what the reference needs (pages and lengths per level)."""
    groups = [rng.randint(*samples) for _ in range(3)]  # requests per prefix group
    prefix = [rng.randint(1, 4000), 0, rng.randint(1, 300)]
    if levels == 2:  # whole pages: the concatenation is also a plain page table, checked below
        prefix = [PAGE * (n // PAGE + 1) for n in prefix]
    sub = [[rng.randint(0, 200) for _ in range(n)] for n in groups] if levels == 3 else None
    suffix = [[rng.randint(1, 500) for _ in range(n)] for n in groups]
    pool = list(range(sum(math.ceil(n / PAGE) for n in prefix + sum(suffix, []) + sum(sub or [], [])) + 9))
    rng.shuffle(pool)
    num_pages = len(pool)

    level_pages = [[_pages(n, pool) for n in prefix]]
    level_lens = [prefix]
    qo_per_level = [groups]
    if sub:  # a sub-prefix per request here: one request per group at level 1, its own pages
        level_pages.append([_pages(n, pool) for n in sum(sub, [])])
        level_lens.append(sum(sub, []))
        qo_per_level.append([1] * sum(groups))
    level_pages.append([_pages(n, pool) for n in sum(suffix, [])])
    level_lens.append(sum(suffix, []))
    qo_per_level.append([1] * sum(groups))

    k = torch.randn(num_pages, PAGE, HKV, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    arrays = [[], [], [], []]
    for pages, lens, qo in zip(level_pages, level_lens, qo_per_level, strict=True):
        arrays[0].append(torch.tensor([0, *torch.tensor(qo).cumsum(0).tolist()], dtype=torch.int32))
        arrays[1].append(
            torch.tensor([0, *torch.tensor([len(p) for p in pages]).cumsum(0).tolist()], dtype=torch.int32)
        )
        arrays[2].append(torch.tensor(sum(pages, []), dtype=torch.int32))
        arrays[3].append(torch.tensor([_last(n) for n in lens], dtype=torch.int32))
    num_tokens = sum(groups)
    size = cascade.workspace_size(
        len(level_pages),
        HQ,
        HKV,
        D,
        max_batch_size=num_tokens,
        max_num_tokens=num_tokens,
        max_num_pages=num_pages,
    )
    w = cascade.CascadeWrapper(len(level_pages), torch.empty(size, dtype=torch.uint8, device="cuda"))
    w.plan(*arrays, HQ, HKV, D, PAGE)
    return w, (k, v), groups, level_pages, level_lens, num_pages


# Samples per prompt: up to 16 stack 64 rows of 32/8 heads, one decode CTA (7 to 16 samples: 2 to 4
# m-tiles, the shared-prefix shape of benchmarks/shared_prefix.py at n = 16); 17 to 20 (68 to 80 rows)
# take the prefill kernel.
@pytest.mark.parametrize(
    "samples", [(1, 6), (7, 16), (17, 20)], ids=["decode-stacked", "decode-stacked-wide", "prefill-stacked"]
)
@pytest.mark.parametrize("levels", [2, 3])
def test_cascade_equals_attention_over_concatenated_kv(levels, samples):
    require(DECODE, PREFILL, MERGE)
    w, (k, v), groups, level_pages, level_lens, _ = _plan_random_cascade(levels, samples, random.Random())
    assert w.plan_.families[0] == ("decode" if samples[1] * HQ // HKV <= 64 else "prefill")
    num_tokens = sum(groups)
    q = torch.randn(num_tokens, HQ, D, device="cuda", dtype=torch.bfloat16)
    o = accuracy.poisoned_like(q)
    lse = accuracy.poison_(torch.empty(q.shape[:2], device="cuda"))
    w.run(q, (k, v), out=o, lse=lse)

    # Each request's whole KV: its group's prefix, its sub-prefix, its suffix, in that order.
    group_of = [g for g, n in enumerate(groups) for _ in range(n)]
    own_pages = [
        level_pages[0][g] + sum((lv[r] for lv in level_pages[1:]), []) for r, g in enumerate(group_of)
    ]
    own_lens = [
        sum(lens[g if i == 0 else r] for i, lens in enumerate(level_lens)) for r, g in enumerate(group_of)
    ]

    def gather(cache, r):
        rows = cache[torch.tensor(own_pages[r], dtype=torch.long, device="cuda")].reshape(-1, HKV, D)
        pieces, at = [], 0
        for pages, n in zip(
            [level_pages[0][group_of[r]]] + [lv[r] for lv in level_pages[1:]],
            [level_lens[0][group_of[r]]] + [lens[r] for lens in level_lens[1:]],
            strict=True,
        ):
            pieces.append(rows[at : at + n])
            at += len(pages) * PAGE
        return torch.cat(pieces)

    refs = {
        dtype: [
            reference.attention(q[r : r + 1], gather(k, r), gather(v, r), dtype=dtype)
            for r in range(num_tokens)
        ]
        for dtype in (torch.float32, torch.bfloat16)
    }
    ref, low = (
        [torch.cat([x[i] for x in refs[dt]]) for i in range(2)] for dt in (torch.float32, torch.bfloat16)
    )
    torch.cuda.synchronize()
    assert_accurate(o, lse, ref, low)

    # Plain paged decode over the concatenated pages reads the same keys (the last page of each level
    # but the last must be full for the concatenation to be a plain page table).
    if levels == 2:
        plain = wrappers.BatchDecodeWrapper(
            torch.empty(
                # Its page table repeats each prefix page once per request of the group.
                wrappers.workspace_size(
                    HQ, HKV, D, max_batch_size=num_tokens, max_num_pages=sum(len(p) for p in own_pages)
                ),
                dtype=torch.uint8,
                device="cuda",
            )
        )
        indptr = torch.tensor(
            [0, *torch.tensor([len(p) for p in own_pages]).cumsum(0).tolist()], dtype=torch.int32
        )
        plain.plan(
            indptr,
            torch.tensor(sum(own_pages, []), dtype=torch.int32),
            torch.tensor([_last(n) for n in own_lens], dtype=torch.int32),
            HQ,
            HKV,
            D,
            PAGE,
        )
        torch.testing.assert_close(plain.run(q, (k, v)), o, atol=2e-2, rtol=2e-2)


def test_cascade_replays_in_a_cuda_graph():
    """The launches (levels on forked streams, then the merge) captured once replay for new queries
    with the same result as an eager run."""
    require(DECODE, MERGE)
    w, kv, groups, *_ = _plan_random_cascade(2, (4, 6), random.Random())
    q = torch.randn(sum(groups), HQ, D, device="cuda", dtype=torch.bfloat16)
    o = accuracy.poisoned_like(q)
    launch = w.launcher(q, *kv, o)
    launch()  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()
    for _ in range(2):
        q.copy_(torch.randn_like(q))
        o.copy_(accuracy.poisoned_like(q))
        graph.replay()
        torch.testing.assert_close(o, w.run(q.clone(), kv), atol=0, rtol=0)


def test_stacked_queries_need_a_decode_variant_without_positions():
    """Several query tokens per request in the decode kernel all sit at the end of the KV: RoPE, ALiBi
    and windows would be wrong for all but the last, so such a variant refuses qo_indptr."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    q = torch.zeros(4, HQ, D, device="cuda", dtype=torch.bfloat16)
    k = torch.zeros(3, PAGE, HKV, D, device="cuda", dtype=torch.bfloat16)
    index = torch.zeros(2, dtype=torch.int32, device="cuda")
    with pytest.raises(InvalidArgument, match="need a decode variant without mask or positions"):
        ops.prepare_attention(
            parse_id("decode_sm90a_bf16_hd128_rope"),
            q,
            k,
            k,
            q,
            kv_indptr=index,
            kv_indices=index,
            kv_last_page_len=index[:1],
            qo_indptr=torch.tensor([0, 4], dtype=torch.int32, device="cuda"),
            work=torch.zeros(1, 6, dtype=torch.int32, device="cuda"),
        )
