"""Cascade (shared-prefix) plans executed on the CPU equal plain attention over the concatenated KV."""

import dataclasses

import numpy as np
import pytest
import torch
from flashinfer_build.kernels import cascade, emulate, ops, reference
from flashinfer_build.kernels.checks import InvalidArgument
from flashinfer_build.kernels.scheduler import CostModel, KernelShape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KERNEL = KernelShape(num_sms=8, ctas_per_sm=2, cta_tile_q=8, cta_tile_kv=16)
CHEAP_SPLITS = CostModel(item_overhead=1.0, merge_launch=0.0, min_gain=0.0)


@st.composite
def cascades(draw):
    """Groups of requests sharing a prefix (level 0), optionally sub-groups sharing a sub-prefix
    (level 1), then each request's own suffix (last level) holding its queries."""
    num_groups = draw(st.integers(1, 3))
    sub_level = draw(st.booleans())
    requests = []  # (group, subgroup, q_len, own suffix length)
    for g in range(num_groups):
        for s in range(draw(st.integers(1, 2)) if sub_level else 1):
            for _ in range(draw(st.integers(1, 3))):
                q_len = draw(st.sampled_from([1, 1, 3]))
                requests.append((g, s, q_len, q_len + draw(st.integers(0, 40))))
    prefix = draw(st.lists(st.integers(0, 120), min_size=num_groups, max_size=num_groups))
    sub = {key: draw(st.integers(0, 50)) for key in {(g, s) for g, s, _, _ in requests}} if sub_level else {}
    return requests, prefix, sub


def _levels(requests, prefix, sub):
    """(qo_lens, kv_lens, member lists) per level; members: the requests of each level-request."""
    levels = []
    group_ids = sorted({g for g, _, _, _ in requests})
    levels.append([(g, prefix[g], [i for i, r in enumerate(requests) if r[0] == g]) for g in group_ids])
    if sub:
        keys = sorted(sub)
        levels.append([(k, sub[k], [i for i, r in enumerate(requests) if (r[0], r[1]) == k]) for k in keys])
    levels.append([(i, r[3], [i]) for i, r in enumerate(requests)])
    return levels


def _plan(level_lens, *, num_qo_heads, num_kv_heads, page_size, decode_tile_q=8, kernel=KERNEL, **kwargs):
    families = cascade.level_families(
        [np.asarray(qo) for qo, _ in level_lens], num_qo_heads // num_kv_heads, decode_tile_q
    )
    return cascade.plan_cascade(
        level_lens,
        num_qo_heads=num_qo_heads,
        num_kv_heads=num_kv_heads,
        page_size=page_size,
        kernels=[kernel] * len(level_lens),
        families=families,
        **kwargs,
    )


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=cascades(),
    cheap=st.booleans(),
    soft_cap=st.sampled_from([None, 4.0]),
    decode_tile_q=st.sampled_from([2, 8, 64]),
    kernel_tile_q=st.sampled_from([8, 16, 64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_cascade_equals_attention_over_concatenated_kv(
    case, cheap, soft_cap, decode_tile_q, kernel_tile_q, seed
):
    """decode_tile_q moves shared levels between the prefill launch and the fused decode launch;
    kernel_tile_q changes how many rows each work item holds."""
    requests, prefix, sub = case
    gen = torch.Generator().manual_seed(seed)
    num_qo_heads, num_kv_heads, head_dim = 4, 2, 8
    q_lens = [r[2] for r in requests]
    q = torch.randn(sum(q_lens), num_qo_heads, head_dim, generator=gen)
    levels = _levels(requests, prefix, sub)
    kv = [
        [
            (
                torch.randn(n, num_kv_heads, head_dim, generator=gen),
                torch.randn(n, num_kv_heads, head_dim, generator=gen),
            )
            for _, n, _ in lv
        ]
        for lv in levels
    ]
    level_lens = [
        ([sum(q_lens[i] for i in members) for _, _, members in lv], [n for _, n, _ in lv]) for lv in levels
    ]
    cp = _plan(
        level_lens,
        num_qo_heads=num_qo_heads,
        num_kv_heads=num_kv_heads,
        page_size=4,
        decode_tile_q=decode_tile_q,
        kernel=dataclasses.replace(KERNEL, cta_tile_q=kernel_tile_q),
        cost=CHEAP_SPLITS if cheap else cascade.DEFAULT_COST,
    )
    for (qo, _), family in zip(level_lens, cp.families, strict=True):
        assert family == "prefill" or max(qo) * 2 <= decode_tile_q or set(qo) == {1}
    assert sum(launch.family == "decode" for launch in cp.launches) <= 1, "decode levels share one launch"
    o, lse = emulate.execute_cascade(
        cp, q, [[k for k, _ in lv] for lv in kv], [[v for _, v in lv] for lv in kv], soft_cap=soft_cap
    )
    start = np.concatenate([[0], np.cumsum(q_lens)])
    for i in range(len(requests)):
        parts = [kv[lvl][j] for lvl, lv in enumerate(levels) for j, (_, _, m) in enumerate(lv) if i in m]
        k = torch.cat([p[0] for p in parts])
        v = torch.cat([p[1] for p in parts])
        ref_o, ref_lse = reference.attention(
            q[start[i] : start[i + 1]], k, v, mask="causal", soft_cap=soft_cap, dtype=torch.float64
        )
        torch.testing.assert_close(o[start[i] : start[i + 1]], ref_o, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(lse[start[i] : start[i + 1]], ref_lse, atol=1e-12, rtol=1e-12)


def test_levels_pick_their_kernel_family_and_mask():
    """32/8 heads: group 4, so a decode CTA of 64 rows holds 16 stacked queries."""
    heads = {"num_qo_heads": 32, "num_kv_heads": 8, "page_size": 16}
    cp = _plan([([16], [4096]), ([1] * 16, [10] * 16)], decode_tile_q=64, **heads)
    assert cp.families == ("decode", "decode")
    assert [(x.family, x.mask, x.levels) for x in cp.launches] == [("decode", "none", (0, 1))]
    too_many = _plan([([17], [4096]), ([1] * 17, [10] * 17)], decode_tile_q=64, **heads)
    assert too_many.families == ("prefill", "decode")
    assert [(x.family, x.mask, x.levels) for x in too_many.launches] == [
        ("prefill", "none", (0,)),
        ("decode", "none", (1,)),
    ], "launches in the order of their first level"
    appending = _plan([([6], [4096]), ([3, 3], [10, 20])], decode_tile_q=64, **heads)
    assert appending.families == ("decode", "prefill")
    assert [(x.family, x.mask, x.levels) for x in appending.launches] == [
        ("decode", "none", (0,)),
        ("prefill", "causal", (1,)),
    ]


def test_decode_levels_share_one_launch_and_read_the_prefix_once():
    n = 16
    decode = KernelShape(num_sms=132, ctas_per_sm=2, cta_tile_q=64, cta_tile_kv=64)
    level_lens = [([n], [4096]), ([1] * n, [256] * n)]
    cp = cascade.plan_cascade(
        level_lens,
        num_qo_heads=32,
        num_kv_heads=8,
        page_size=16,
        kernels=[decode] * 2,
        families=cascade.level_families([np.array(qo) for qo, _ in level_lens], 4, decode.cta_tile_q),
    )
    (launch,) = cp.launches
    assert launch.stacked and launch.levels == (0, 1)
    assert launch.first_token.tolist() == [0, *range(n), n], "the prefix request, then one per sample"
    prefix = launch.work[launch.work[:, 0] == 0]
    assert (prefix[:, 1] == 0).all() and (prefix[:, 2] == n * 4).all(), "one CTA holds all 64 stacked rows"
    assert int((prefix[:, 4] - prefix[:, 3]).sum()) == 4096, "each prefix key is read by exactly one item"
    chunks = prefix.shape[0]
    assert chunks > 1, "the prefix is split over KV chunks to fill the GPU"
    assert launch.work.shape[0] == chunks + n and (launch.work[chunks:, 0] == np.arange(1, n + 1)).all()
    assert (np.diff(cp.merge_indptr) == chunks + 1).all(), "every prefix chunk and the own suffix merge"


def test_family_names_are_checked():
    with pytest.raises(ValueError, match="level 0: family must be 'decode' or 'prefill', got 'merge'"):
        cascade.plan_cascade(
            [([1], [10])], num_qo_heads=4, num_kv_heads=2, page_size=1, kernels=[KERNEL], families=["merge"]
        )


def test_levels_must_group_the_same_tokens():
    with pytest.raises(ValueError, match="level 1 groups 3 query tokens but level 0 groups 4"):
        _plan([([4], [100]), ([1, 1, 1], [1, 1, 1])], num_qo_heads=4, num_kv_heads=2, page_size=1)


def test_workspace_size_grows_with_levels():
    one = cascade.workspace_size(1, 32, 8, 128, max_batch_size=16, max_num_tokens=16)
    three = cascade.workspace_size(3, 32, 8, 128, max_batch_size=16, max_num_tokens=16)
    assert 0 < one < three


def test_a_launch_batch_lists_each_request_with_its_own_pages_and_first_token():
    level_lens = [([3, 2], [40, 7]), ([1] * 5, [5, 0, 17, 3, 9])]
    cp = _plan(level_lens, num_qo_heads=4, num_kv_heads=2, page_size=4, decode_tile_q=64)
    (launch,) = cp.launches
    rng = np.random.default_rng(0)
    host_levels = []
    for qo, kv in level_lens:
        pages = [-(-n // 4) for n in kv]
        kv_ptr = np.concatenate([[0], np.cumsum(pages)])
        spare = 3  # kv_indices may hold more entries than kv_indptr[-1] uses
        indices = rng.permutation(100)[: kv_ptr[-1] + spare]
        last = np.array([n - (p - 1) * 4 if p else 0 for n, p in zip(kv, pages, strict=True)])
        host_levels.append((np.concatenate([[0], np.cumsum(qo)]), kv_ptr, indices, last))
    batch = cascade._launch_arrays(launch, host_levels)
    requests = [(level, r) for level in launch.levels for r in range(len(level_lens[level][0]))]
    assert launch.first_token.tolist() == [0, 3, 0, 1, 2, 3, 4, 5]
    for i, (level, r) in enumerate(requests):
        _, kv_ptr, indices, last = host_levels[level]
        got = batch["kv_indices"][batch["kv_indptr"][i] : batch["kv_indptr"][i + 1]]
        assert got.tolist() == indices[kv_ptr[r] : kv_ptr[r + 1]].tolist()
        assert batch["kv_last_page_len"][i] == last[r]


def test_index_checks_read_decode_first_tokens_and_bound_their_rows():
    """ops' check_indices reads a stacked decode launch's qo_indptr as first tokens (the prefix request's
    0, then each sample's own token), not as an indptr, and refuses rows past the last query token."""
    k = torch.zeros(8, 4, 2, 8)  # 8 pages of 4 slots, 2 KV heads (group 2 below)
    index = torch.tensor([0, 2, 3, 4], dtype=torch.int32)  # 3 requests: 2 pages, 1, 1
    args = (k, True, 4, index, torch.arange(4, dtype=torch.int32), torch.tensor([4, 4, 4], dtype=torch.int32))
    first = torch.tensor([0, 0, 1, 2], dtype=torch.int32)
    work = torch.tensor([[0, 0, 4, 0, 8, 0], [1, 0, 2, 0, 4, 2], [2, 0, 2, 0, 4, 3]], dtype=torch.int32)
    partial_o = torch.zeros(4, 4, 8)
    ops._check_index_values(*args, first, 2, work, partial_o, 2, first_tokens=True)
    past = work.clone()
    past[2, 2] = 4  # request 2 starts at token 1 of 2: rows [0, 4) would reach token 2
    with pytest.raises(InvalidArgument, match=r"query rows must lie in \[0, 2\]"):
        ops._check_index_values(*args, first, 2, past, partial_o, 2, first_tokens=True)
    with pytest.raises(InvalidArgument, match=r"work\[0\].*query rows must lie in \[0, 0\]"):
        ops._check_index_values(*args, first, 2, work, partial_o, 2)  # read as an indptr: request 0 owns none
