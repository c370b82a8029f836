"""Batch decode kernels against the float32 reference, one test per built decode variant (test id =
variant id), on random shuffled page tables, split and unsplit work lists."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from flashinfer_build.kernels import accuracy, loader, ops, reference
from flashinfer_build.kernels.checks import InvalidArgument, torch_dtype
from flashinfer_build.variants import hooks, parse_id

pytestmark = pytest.mark.gpu


def built_variants(family: str) -> list:
    """(pack arch, variant) for every `family` variant of every pack this GPU runs; a single skip
    parameter when there is no GPU or no pack."""
    if not torch.cuda.is_available():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason="no CUDA GPU"))]
    capability = torch.cuda.get_device_capability()
    try:
        packs = [p for p in loader.discover_packs() if p.fits(capability)]
    except loader.PackError as e:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=str(e)))]
    params = [
        pytest.param(pack.arch, vid, id=vid)
        for pack in packs
        for vid in sorted(pack.variants)
        if vid.startswith(family + "_")
    ]
    return params or [pytest.param(None, None, marks=pytest.mark.skip(reason=f"no built {family} variant"))]


# (layout, page size, qo heads, kv heads, split): page size 1 and 64, MHA, GQA 4 and 12, MQA 32 and 64.
CASES = [
    ("NHD", 16, 32, 8, False),
    ("HND", 1, 8, 8, True),
    ("NHD", 64, 32, 1, True),
    ("HND", 5, 24, 2, False),
    ("NHD", 16, 64, 1, True),
]

LONGEST = 8192 + 37  # the longest request of a case: many pipeline tiles, not a page multiple


def kv_lengths(page_size: int, rng: random.Random) -> list[int]:
    return [0, 1, page_size, 3 * page_size + 1, rng.randint(100, 700), LONGEST]


def make_paged_cache(kv_lens, page_size, num_kv_heads, head_dim, layout, kv_dtype, device, rng):
    """A cache with shuffled, non-contiguous page ids (and spare pages) plus its index arrays."""
    pages_per_req = [math.ceil(n / page_size) for n in kv_lens]
    total = sum(pages_per_req)
    num_pages = total + 7
    ids = list(range(num_pages))
    rng.shuffle(ids)
    indptr = [0]
    for n in pages_per_req:
        indptr.append(indptr[-1] + n)
    last = [n - (p - 1) * page_size if p else 0 for n, p in zip(kv_lens, pages_per_req, strict=True)]
    shape = (
        (num_pages, page_size, num_kv_heads, head_dim)
        if layout == "NHD"
        else (num_pages, num_kv_heads, page_size, head_dim)
    )
    k = torch.randn(shape, device=device)
    v = torch.randn(shape, device=device)
    scale = 0.5 if kv_dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else 1.0
    k, v = (k / scale).to(kv_dtype), (v / scale).to(kv_dtype)
    i32 = dict(dtype=torch.int32, device=device)
    return (
        k,
        v,
        torch.tensor(indptr, **i32),
        torch.tensor(ids[:total], **i32),
        torch.tensor(last, **i32),
        scale,
    )


def work_list(kv_lens, group, chunk, device):
    """Unsplit (chunk None): one direct item per request. Split: chunks of `chunk` keys, each a
    partial row, and the merge index combining them per request."""
    items, merge_indptr, merge_indices = [], [0], []
    for r, n in enumerate(kv_lens):
        if chunk is None:
            items.append([r, 0, group, 0, n, -1])
            continue
        bounds = list(range(0, n, chunk)) or [0]
        for b in bounds:
            merge_indices.append(len(items))
            items.append([r, 0, group, b, min(n, b + chunk), len(items)])
        merge_indptr.append(len(merge_indices))
    i32 = dict(dtype=torch.int32, device=device)
    items.append([-1, 0, 0, 0, 0, -1])  # padding of a fixed-size grid: must be a no-op
    return (
        torch.tensor(items, **i32),
        torch.tensor(merge_indptr, **i32),
        torch.tensor(merge_indices, **i32),
        len(items) - 1,
    )


def hook_kwargs(variant, num_qo_heads, device) -> dict:
    kw = {}
    if variant.soft_cap:
        kw["logits_soft_cap"] = 2.0
    if variant.pos == "alibi":
        kw["alibi_slopes"] = hooks.alibi_slopes(num_qo_heads).to(device)
    if variant.pos == "rope":
        kw["rope_theta"], kw["rope_scale"] = 1e4, 2.0
    if variant.mask == "sliding_window":
        kw["window_left"] = 300
    return kw


def reference_decode(variant, q, k, v, indptr, indices, last, layout, scale, kw, dtype):
    outs, lses = [], []
    for r in range(q.shape[0]):
        kr = reference.gather_paged(k, indptr, indices, last, r, layout)
        vr = reference.gather_paged(v, indptr, indices, last, r, layout)
        o, lse = reference.attention(
            q[r : r + 1],
            kr,
            vr,
            mask=variant.mask,
            pos=variant.pos,
            soft_cap=kw.get("logits_soft_cap"),
            window_left=kw.get("window_left", -1),
            alibi_slopes=kw.get("alibi_slopes"),
            rope_theta=kw.get("rope_theta", 1e4),
            rope_scale=kw.get("rope_scale", 1.0),
            k_scale=scale,
            v_scale=scale,
            dtype=dtype,
        )
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c[0]}-page{c[1]}-h{c[2]}x{c[3]}-{'split' if c[4] else 'whole'}"
)
@pytest.mark.parametrize("arch,variant_id", built_variants("decode"))
def test_decode_matches_reference(arch, variant_id, case):
    variant = parse_id(variant_id)
    layout, page_size, num_qo_heads, num_kv_heads, split = case
    rng = random.Random()
    device = torch.device("cuda")
    q_dtype, kv_dtype = torch_dtype(variant.q_dtype), torch_dtype(variant.kv_dtype)
    kv_lens = kv_lengths(page_size, rng)
    rng.shuffle(kv_lens)
    k, v, indptr, indices, last, scale = make_paged_cache(
        kv_lens, page_size, num_kv_heads, variant.head_dim, layout, kv_dtype, device, rng
    )
    q = torch.randn(len(kv_lens), num_qo_heads, variant.head_dim, device=device).to(q_dtype)
    group = num_qo_heads // num_kv_heads
    work, merge_indptr, merge_indices, rows = work_list(kv_lens, group, 1000 if split else None, device)
    kw = hook_kwargs(variant, num_qo_heads, device)
    o = accuracy.poisoned_like(q)
    lse = accuracy.poison_(torch.empty(q.shape[:2], device=device))
    with loader.pinned_arch(arch):
        if split:
            partial_o = accuracy.poison_(torch.empty(rows, num_qo_heads, variant.head_dim, device=device))
            partial_lse = accuracy.poison_(torch.empty(rows, num_qo_heads, device=device))
            ops.attention(
                variant,
                q,
                k,
                v,
                o,
                kv_indptr=indptr,
                kv_indices=indices,
                kv_last_page_len=last,
                kv_layout=layout,
                work=work,
                partial_o=partial_o,
                partial_lse=partial_lse,
                k_scale=scale,
                v_scale=scale,
                check_indices=True,
                **kw,
            )
            ops.merge_states(partial_o, partial_lse, merge_indptr, merge_indices, o, lse)
        else:
            ops.attention(
                variant,
                q,
                k,
                v,
                o,
                kv_indptr=indptr,
                kv_indices=indices,
                kv_last_page_len=last,
                kv_layout=layout,
                work=work,
                lse=lse,
                k_scale=scale,
                v_scale=scale,
                check_indices=True,
                **kw,
            )
    torch.cuda.synchronize()
    ref_o, ref_lse = reference_decode(
        variant, q, k, v, indptr, indices, last, layout, scale, kw, torch.float32
    )
    low_o, low_lse = reference_decode(variant, q, k, v, indptr, indices, last, layout, scale, kw, q_dtype)
    empty = torch.isinf(ref_lse)
    o_cmp = accuracy.compare(o, ref_o, low_o.float(), empty_rows=empty)
    lse_cmp = accuracy.compare(lse, ref_lse, low_lse.float(), empty_rows=empty, empty_value=float("-inf"))
    assert o_cmp.passed, f"o: {o_cmp.problem()} (rel err {o_cmp.rel_err:.3g})"
    assert lse_cmp.passed, f"lse: {lse_cmp.problem()}"


@pytest.mark.parametrize("arch,variant_id", built_variants("decode")[:1])
def test_decode_rejects_bad_arguments(arch, variant_id):
    variant = parse_id(variant_id)
    device = torch.device("cuda")
    q_dtype, kv_dtype = torch_dtype(variant.q_dtype), torch_dtype(variant.kv_dtype)
    k = torch.zeros(4, 16, 2, variant.head_dim, device=device).to(kv_dtype)
    q = torch.zeros(2, 8, variant.head_dim, device=device, dtype=q_dtype)
    i32 = dict(dtype=torch.int32, device=device)
    good = dict(
        kv_indptr=torch.tensor([0, 1, 2], **i32),
        kv_indices=torch.tensor([3, 0], **i32),
        kv_last_page_len=torch.tensor([16, 3], **i32),
        work=torch.tensor([[0, 0, 4, 0, 16, -1]], **i32),
    )
    with loader.pinned_arch(arch):
        ops.prepare_attention(variant, q, k, k, torch.empty_like(q), **good)
        with pytest.raises(InvalidArgument, match="kv_indices holds page id 9"):
            ops.prepare_attention(
                variant,
                q,
                k,
                k,
                torch.empty_like(q),
                **{**good, "kv_indices": torch.tensor([9, 0], **i32)},
                check_indices=True,
            )
        with pytest.raises(InvalidArgument, match="kv_indptr must have dtype int32"):
            ops.prepare_attention(
                variant,
                q,
                k,
                k,
                torch.empty_like(q),
                **{**good, "kv_indptr": torch.tensor([0, 1, 2], device=device)},
            )
        with pytest.raises(InvalidArgument, match="multiple of the KV cache's 3 heads"):
            k3 = torch.zeros(4, 16, 3, variant.head_dim, device=device).to(kv_dtype)
            ops.prepare_attention(variant, q, k3, k3, torch.empty_like(q), **good)
        with pytest.raises(InvalidArgument, match="o differs"):
            p = ops.prepare_attention(variant, q, k, k, torch.empty_like(q), **good)
            p.launch(q, k, k, torch.empty(2, 8, variant.head_dim, device=device, dtype=q_dtype)[:, ::2])
        unbuilt = dataclasses.replace(
            variant,
            q_dtype="fp16",
            kv_dtype="fp8e5m2",
            head_dim=256,
            mask="sliding_window",
            pos="alibi",
            soft_cap=True,
        )
        if any(unbuilt.id.replace(arch, p.arch) in p.variants for p in loader.discover_packs()):
            pytest.skip(f"{unbuilt.id} is built: nothing left to ask for")
        with pytest.raises(loader.PackError, match="its decode variants are: decode_"):
            ops.kernel_info(unbuilt)
