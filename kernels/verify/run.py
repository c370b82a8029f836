"""How verify executes one case: through the wrappers on a GPU, or the scheduler's CPU emulation."""

from __future__ import annotations

import random

import torch

from ...variants import Variant
from ..accuracy import poison_, poisoned_like
from .cases import DTYPES, Case, Inputs

# CPU emulation plans for small imaginary GPUs as well as an H100-sized one, so that the small CPU cases
# still take the split-KV paths a real GPU takes only at large lengths.
EMULATED_SMS = (4, 16, 132, 132)
EMULATED_TILES_Q = (16, 64, 128)
EMULATED_TILES_KV = (16, 64)


def run_wrappers(variant: Variant, case: Case, x: Inputs):
    """plan + run through BatchDecodeWrapper / BatchPrefillWrapper into poisoned outputs."""
    from .. import wrappers

    pages = int(x.kv_indices.numel()) if x.kv_indices is not None else 0
    size = wrappers.workspace_size(
        case.num_qo_heads,
        case.num_kv_heads,
        variant.head_dim,
        max_batch_size=len(case.q_lens),
        max_num_tokens=max(1, sum(case.q_lens)),
        max_num_pages=pages,
        decode=variant.family == "decode",
    )
    workspace = torch.empty(size, dtype=torch.uint8, device=x.q.device)

    knobs = dict(
        q_dtype=DTYPES[variant.q_dtype],
        kv_dtype=DTYPES[variant.kv_dtype],
        mask=variant.mask,
        window_left=case.window_left,
        pos=variant.pos,
        logits_soft_cap=case.soft_cap or None,
        sm_scale=x.sm_scale,
        alibi_slopes=x.alibi_slopes,
        k_scale=x.k_scale,
        v_scale=x.v_scale,
        split_kv=case.split_kv,
    )
    o = poisoned_like(x.q)
    lse = poison_(torch.empty(x.q.shape[:2], dtype=torch.float32, device=x.q.device))
    hq, hkv, d = case.num_qo_heads, case.num_kv_heads, variant.head_dim
    if variant.family == "decode":
        w = wrappers.BatchDecodeWrapper(workspace, case.kv_layout)
        w.plan(x.kv_indptr, x.kv_indices, x.kv_last_page_len, hq, hkv, d, case.page_size, **knobs)
        w.run(x.q, (x.k, x.v), out=o, lse=lse)
    else:
        w = wrappers.BatchPrefillWrapper(workspace, case.kv_layout, paged=case.paged)
        paging = dict(kv_indices=x.kv_indices, kv_last_page_len=x.kv_last_page_len, page_size=case.page_size)
        w.plan(
            x.qo_indptr,
            x.kv_indptr,
            hq,
            hkv,
            d,
            custom_mask=x.custom_mask,
            **(paging if case.paged else {}),
            **knobs,
        )
        w.run(x.q, x.k, x.v, out=o, lse=lse)
    torch.cuda.synchronize()
    return o, lse


def run_emulated(variant: Variant, case: Case, x: Inputs):
    """scheduler.plan for an imaginary GPU drawn from the case's seed, emulate.check_plan (coverage),
    then emulate.execute in float64."""
    from .. import emulate, scheduler

    rng = random.Random(case.seed)
    kernel = scheduler.KernelShape(
        num_sms=rng.choice(EMULATED_SMS),
        ctas_per_sm=rng.choice((1, 2)),
        cta_tile_q=rng.choice(EMULATED_TILES_Q),
        cta_tile_kv=rng.choice(EMULATED_TILES_KV),
    )
    qo_lens = None if variant.family == "decode" else list(case.q_lens)
    heads = dict(num_qo_heads=case.num_qo_heads, num_kv_heads=case.num_kv_heads)
    plan = scheduler.plan(
        qo_lens,
        list(case.kv_lens),
        **heads,
        page_size=max(case.page_size, 1),
        kernel=kernel,
        mask=variant.mask,
        window_left=case.window_left,
        split_kv=case.split_kv,
        kv_bytes=DTYPES[variant.kv_dtype].itemsize,
    )
    emulate.check_plan(
        plan,
        qo_lens,
        list(case.kv_lens),
        **heads,
        cta_tile_q=kernel.cta_tile_q,
        mask=variant.mask,
        window_left=case.window_left,
    )
    keys, values = [], []
    for r in range(len(case.kv_lens)):
        k, v = x.request_kv(case, r)
        keys.append(k.double() * x.k_scale)
        values.append(v.double() * x.v_scale)
    return emulate.execute(
        plan,
        x.q,
        keys,
        values,
        qo_lens,
        mask=variant.mask,
        pos=variant.pos,
        sm_scale=x.sm_scale,
        soft_cap=case.soft_cap or None,
        window_left=case.window_left,
        custom_masks=x.custom_masks or None,
        alibi_slopes=x.alibi_slopes,
        dtype=torch.float64,
    )
