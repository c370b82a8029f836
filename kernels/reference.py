"""Reference attention in float32/float64 PyTorch: what every kernel is compared against.

Variant semantics come from variants/hooks.py (the same definitions the C++ hooks implement), so a
variant is defined once. Works on any device, including the CPU.
"""

from __future__ import annotations

import math

import torch

from ..variants import hooks


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: str = "none",
    pos: str = "none",
    sm_scale: float | None = None,
    soft_cap: float | None = None,
    window_left: int = -1,
    custom_mask: torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None,
    rope_theta: float = 1e4,
    rope_scale: float = 1.0,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One request. q: [q_len, Hq, D]; k, v: [kv_len, Hkv, D] (fp8 allowed; scaled by k/v_scale).

    Returns o [q_len, Hq, D] and lse [q_len, Hq] (natural log) in `dtype`. A query row that sees no
    key gets o = 0 and lse = -inf, as the kernels write it."""
    q_len, num_qo_heads, head_dim = q.shape
    kv_len, num_kv_heads, _ = k.shape
    if num_qo_heads % num_kv_heads:
        raise ValueError(f"num_qo_heads {num_qo_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    group = num_qo_heads // num_kv_heads
    sm_scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    qf, kf, vf = q.to(dtype), k.to(dtype) * k_scale, v.to(dtype) * v_scale
    if pos == "rope":
        qf = hooks.apply_rope(qf, hooks.query_positions(q_len, kv_len, q.device), rope_theta, rope_scale)
        kf = hooks.apply_rope(kf, torch.arange(kv_len, device=k.device), rope_theta, rope_scale)
    kf = kf.repeat_interleave(group, dim=1)  # (kv_len, Hq, D)
    vf = vf.repeat_interleave(group, dim=1)
    s = torch.einsum("qhd,khd->hqk", qf, kf)
    s = hooks.logits_transform(
        s,
        sm_scale=sm_scale,
        q_len=q_len,
        kv_len=kv_len,
        pos=pos,
        alibi_slopes=alibi_slopes.to(q.device) if alibi_slopes is not None else None,
        soft_cap=soft_cap,
    )
    keep = hooks.mask_keep(
        mask, q_len, kv_len, window_left=window_left, custom_mask=custom_mask, device=q.device
    )
    s = s.masked_fill(~keep[None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (Hq, q_len)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)  # rows with no key: exp(-inf - -inf) = nan -> 0
    o = torch.einsum("hqk,khd->qhd", p, vf)
    return o, lse.transpose(0, 1).contiguous()


def gather_paged(
    cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_last_page_len: torch.Tensor,
    request: int,
    layout: str = "NHD",
) -> torch.Tensor:
    """Request `request`'s keys (or values) from a paged cache, as [kv_len, H, D].

    cache: [num_pages, page_size, H, D] (NHD) or [num_pages, H, page_size, D] (HND)."""
    lo, hi = int(kv_indptr[request]), int(kv_indptr[request + 1])
    pages = cache[kv_indices[lo:hi].long()]
    if layout == "HND":
        pages = pages.transpose(1, 2)
    rows = pages.reshape(-1, *pages.shape[2:])
    if hi == lo:
        return rows
    page_size = cache.shape[1] if layout == "NHD" else cache.shape[2]
    kv_len = (hi - lo - 1) * page_size + int(kv_last_page_len[request])
    return rows[:kv_len]
