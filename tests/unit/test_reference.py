"""The reference attention (kernels/reference.py) and the hook semantics it uses (variants/hooks.py)."""

import math

import pytest
import torch
from flashinfer_build.kernels import reference
from flashinfer_build.variants import hooks


def _sdpa(q, k, v, keep, scale):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=keep, scale=scale
    )
    return out.transpose(0, 1)


@pytest.mark.parametrize("mask", ["none", "causal", "sliding_window"])
@pytest.mark.parametrize("q_len,kv_len", [(1, 17), (7, 7), (5, 33)])
def test_matches_sdpa(mask, q_len, kv_len):
    q, k, v = torch.randn(q_len, 8, 32), torch.randn(kv_len, 2, 32), torch.randn(kv_len, 2, 32)
    o, lse = reference.attention(q, k, v, mask=mask, window_left=3)
    keep = hooks.mask_keep(mask, q_len, kv_len, window_left=3)
    torch.testing.assert_close(o, _sdpa(q, k, v, keep, 1 / math.sqrt(32)), atol=1e-5, rtol=1e-5)
    s = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(4, 1)) / math.sqrt(32)
    expected_lse = torch.logsumexp(s.masked_fill(~keep, float("-inf")), -1).T
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


def test_causal_aligned_to_end():
    keep = hooks.mask_keep("causal", 2, 5)
    assert keep.tolist() == [[True, True, True, True, False], [True] * 5]


def test_no_visible_key_gives_zero_and_minus_inf():
    q, k, v = torch.randn(3, 4, 16), torch.randn(0, 4, 16), torch.randn(0, 4, 16)
    o, lse = reference.attention(q, k, v)
    assert o.shape == (3, 4, 16) and torch.all(o == 0)
    assert torch.all(lse == float("-inf"))


def test_rope_depends_only_on_relative_position():
    q, k = torch.randn(1, 1, 64, dtype=torch.float64), torch.randn(1, 1, 64, dtype=torch.float64)

    def score(pq, pk):
        rq = hooks.apply_rope(q, torch.tensor([pq]), 1e4, 1.0)
        rk = hooks.apply_rope(k, torch.tensor([pk]), 1e4, 1.0)
        return float((rq * rk).sum())

    assert score(10, 3) == pytest.approx(score(107, 100), rel=1e-9)
    assert score(10, 3) != pytest.approx(score(10, 4), rel=1e-3)


def test_alibi_and_soft_cap_transform():
    s = torch.full((2, 1, 3), 10.0)
    out = hooks.logits_transform(
        s, sm_scale=0.5, q_len=1, kv_len=3, pos="alibi", alibi_slopes=torch.tensor([1.0, 0.5]), soft_cap=4.0
    )
    bias = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, -0.5, 0.0]])
    torch.testing.assert_close(out[:, 0], 4.0 * torch.tanh((5.0 + bias) / 4.0))


def test_fp8_kv_is_scaled():
    q = torch.randn(2, 2, 16)
    k, v = torch.randn(6, 2, 16), torch.randn(6, 2, 16)
    k8, v8 = k.to(torch.float8_e4m3fn), v.to(torch.float8_e4m3fn)
    o, _ = reference.attention(q, k8, v8, k_scale=2.0, v_scale=0.5)
    o_ref, _ = reference.attention(q, k8.float() * 2.0, v8.float() * 0.5)
    torch.testing.assert_close(o, o_ref)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_gather_paged_round_trip(layout):
    page_size, heads, dim = 4, 2, 8
    rows = [torch.randn(n, heads, dim) for n in (5, 0, 8, 1)]
    pages_per = [math.ceil(len(r) / page_size) for r in rows]
    ids = torch.randperm(sum(pages_per) + 3)[: sum(pages_per)].int()
    cache = torch.full((sum(pages_per) + 3, page_size, heads, dim), float("nan"))
    indptr = torch.tensor([0, *torch.tensor(pages_per).cumsum(0).tolist()], dtype=torch.int32)
    last = torch.tensor([(len(r) - 1) % page_size + 1 if len(r) else 0 for r in rows], dtype=torch.int32)
    for r, x in enumerate(rows):
        for j in range(len(x)):
            cache[ids[indptr[r] + j // page_size], j % page_size] = x[j]
    if layout == "HND":
        cache = cache.transpose(1, 2).contiguous()
    for r, x in enumerate(rows):
        torch.testing.assert_close(reference.gather_paged(cache, indptr, ids, last, r, layout), x)
