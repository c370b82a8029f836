"""Fused RoPE at long positions (past 128k), where angles reach 1e5 radians and float32 arithmetic on
the angle alone would turn vectors by 1e-2 rad.

verify's random cases stay below a few thousand keys, and its low-precision reference rotates in
bf16 (positions rounded to 8 bits), which at these positions is no reference at all. Here the bar is
what PyTorch reaches in the input dtype when given q and k rotated exactly (in float64) and rounded
to it, as the bench baselines get them: the accuracy rule (kernels/accuracy.py) with that as the
low-precision reference and float64 RoPE attention as the truth."""

from __future__ import annotations

import math

import pytest
import torch
from flashinfer_build.kernels import accuracy, loader, reference, wrappers
from flashinfer_build.kernels.checks import torch_dtype
from flashinfer_build.variants import hooks, parse_id

pytestmark = pytest.mark.gpu

HQ, HKV, PAGE = 8, 2, 16
KV_LEN = 2**17 + 2**15 + 37  # 163877 keys: the last positions are past 160k
ROPE_THETA, ROPE_SCALE = 5e5, 1.0  # Llama 3's theta
Q_SPREAD = 2.0  # sharper attention, so each logit's error shows in lse


def rope_variants() -> list:
    """Every built 16-bit RoPE variant of decode (no mask) and prefill (causal)."""
    if not torch.cuda.is_available():
        return [pytest.param(None, marks=pytest.mark.skip(reason="no CUDA GPU"))]
    try:
        packs = [p for p in loader.discover_packs() if p.fits(torch.cuda.get_device_capability())]
    except loader.PackError as e:
        return [pytest.param(None, marks=pytest.mark.skip(reason=str(e)))]
    ids = sorted({vid for p in packs for vid in p.variants if _long_rope_candidate(parse_id(vid))})
    return ids or [pytest.param(None, marks=pytest.mark.skip(reason="no built 16-bit RoPE variant"))]


def _long_rope_candidate(v) -> bool:
    mask = {"decode": "none", "prefill": "causal"}.get(v.family)
    return v.pos == "rope" and v.mask == mask and v.kv_dtype == v.q_dtype


def low_precision_reference(q, k, v, q_pos, mask, soft_cap, dtype):
    """PyTorch attention in `dtype` on q and k rotated in float64 and rounded to `dtype`."""
    qr = hooks.apply_rope(q.double(), q_pos, ROPE_THETA, ROPE_SCALE).to(dtype)
    kr = hooks.apply_rope(k.double(), torch.arange(k.shape[0], device=k.device), ROPE_THETA, ROPE_SCALE)
    return reference.attention(qr, kr.to(dtype), v, mask=mask, soft_cap=soft_cap, dtype=dtype)


def compare(variant, soft_cap, o, lse, q, k, v) -> tuple[accuracy.Comparison, accuracy.Comparison]:
    ref_o, ref_lse = reference.attention(
        q,
        k,
        v,
        mask=variant.mask,
        pos="rope",
        soft_cap=soft_cap,
        rope_theta=ROPE_THETA,
        rope_scale=ROPE_SCALE,
        dtype=torch.float64,
    )
    q_pos = hooks.query_positions(q.shape[0], k.shape[0], q.device)
    low_o, low_lse = low_precision_reference(q, k, v, q_pos, variant.mask, soft_cap, q.dtype)
    empty = torch.isinf(ref_lse)
    return (
        accuracy.compare(o, ref_o, low_o.float(), empty_rows=empty),
        accuracy.compare(lse, ref_lse, low_lse.float(), empty_rows=empty, empty_value=-math.inf),
    )


def run_long_case(variant, kv_len: int = KV_LEN) -> tuple[accuracy.Comparison, accuracy.Comparison]:
    """One request of kv_len keys through the planned wrappers; (o, lse) comparisons."""
    d, dtype = variant.head_dim, torch_dtype(variant.q_dtype)
    soft_cap = 30.0 if variant.soft_cap else None
    rope = dict(pos="rope", logits_soft_cap=soft_cap, rope_theta=ROPE_THETA, rope_scale=ROPE_SCALE)
    g = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(kv_len, HKV, d, device="cuda", generator=g).to(dtype)
    v = torch.randn(kv_len, HKV, d, device="cuda", generator=g).to(dtype)
    q_len = 1 if variant.family == "decode" else 77  # prefill: three q tiles at the last positions
    q = (Q_SPREAD * torch.randn(q_len, HQ, d, device="cuda", generator=g)).to(dtype)
    o = accuracy.poisoned_like(q)
    lse = accuracy.poison_(torch.empty(q.shape[:2], device="cuda"))
    i32 = dict(dtype=torch.int32)
    with loader.pinned_arch(variant.arch):
        if variant.family == "decode":
            pages = math.ceil(kv_len / PAGE)
            pad = k.new_zeros(pages * PAGE - kv_len, HKV, d)
            k_cache = torch.cat([k, pad]).view(pages, PAGE, HKV, d)
            v_cache = torch.cat([v, pad]).view(pages, PAGE, HKV, d)
            size = wrappers.workspace_size(HQ, HKV, d, max_batch_size=1, max_num_pages=pages)
            w = wrappers.BatchDecodeWrapper(torch.empty(size, dtype=torch.uint8, device="cuda"))
            last = kv_len - (pages - 1) * PAGE
            w.plan(
                torch.tensor([0, pages], **i32),
                torch.arange(pages, **i32),
                torch.tensor([last], **i32),
                HQ,
                HKV,
                d,
                PAGE,
                q_dtype=dtype,
                **rope,
            )
            w.run(q, (k_cache, v_cache), out=o, lse=lse)
        else:
            size = wrappers.workspace_size(HQ, HKV, d, max_batch_size=1, max_num_tokens=q_len, decode=False)
            w = wrappers.BatchPrefillWrapper(torch.empty(size, dtype=torch.uint8, device="cuda"), paged=False)
            w.plan(
                torch.tensor([0, q_len], **i32),
                torch.tensor([0, kv_len], **i32),
                HQ,
                HKV,
                d,
                mask="causal",
                q_dtype=dtype,
                **rope,
            )
            w.run(q, k, v, out=o, lse=lse)
    torch.cuda.synchronize()
    return compare(variant, soft_cap, o, lse, q, k, v)


@pytest.mark.parametrize("variant_id", rope_variants())
def test_rope_at_long_positions(variant_id):
    o_cmp, lse_cmp = run_long_case(parse_id(variant_id))
    assert o_cmp.passed, f"o: {o_cmp.problem()} (rel err {o_cmp.rel_err:.3g})"
    assert lse_cmp.passed, f"lse: {lse_cmp.problem()}"
