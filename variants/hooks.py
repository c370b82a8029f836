"""Reference semantics of each hook, in PyTorch, next to the C++ hooks in kernels/csrc/fusion/.

Every function works on float32 (or float64) tensors for one request and one set of heads, and is
what kernels/reference.py composes into the reference attention. Positions follow the kernels: query
token i of a request with q_len queries over kv_len keys sits at position kv_len - q_len + i.
"""

from __future__ import annotations

import torch


def query_positions(q_len: int, kv_len: int, device=None) -> torch.Tensor:
    return torch.arange(kv_len - q_len, kv_len, device=device)


def apply_rope(x: torch.Tensor, pos: torch.Tensor, rope_theta: float, rope_scale: float) -> torch.Tensor:
    """Llama "rotate half" RoPE. x: [n, heads, head_dim], pos: [n]. Mirrors fusion/rope.cuh."""
    d = x.shape[-1]
    i = torch.arange(d // 2, device=x.device, dtype=x.dtype)
    inv_freq = torch.pow(torch.tensor(rope_theta, dtype=x.dtype, device=x.device), -2.0 * i / d) / rope_scale
    angle = pos.to(x.dtype)[:, None] * inv_freq[None, :]  # (n, d/2)
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    lo, hi = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([lo * cos - hi * sin, hi * cos + lo * sin], dim=-1)


def mask_keep(
    mask: str,
    q_len: int,
    kv_len: int,
    *,
    window_left: int = -1,
    custom_mask: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """Boolean [q_len, kv_len]: True where query i may see key j. Mirrors Variant::keep."""
    qp = query_positions(q_len, kv_len, device)[:, None]
    kv = torch.arange(kv_len, device=device)[None, :]
    if mask == "none":
        return torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if mask == "causal":
        return kv <= qp
    if mask == "sliding_window":
        return (kv <= qp) & (kv >= qp - window_left)
    if mask == "custom":
        if custom_mask is None or tuple(custom_mask.shape) != (q_len, kv_len):
            raise ValueError(f"custom mask must be a bool tensor of shape ({q_len}, {kv_len})")
        return custom_mask.to(device=device, dtype=torch.bool)
    raise ValueError(f"unknown mask {mask!r}")


def logits_transform(
    s: torch.Tensor,
    *,
    sm_scale: float,
    q_len: int,
    kv_len: int,
    pos: str = "none",
    alibi_slopes: torch.Tensor | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """Scaled logits [heads, q_len, kv_len] from raw dot products: scale, ALiBi bias, soft-cap.

    Mirrors Variant::logits_transform followed by the softmax scale (the kernels fold sm_scale into
    exp2 when no transform runs, which is the same function)."""
    s = s * sm_scale
    if pos == "alibi":
        qp = query_positions(q_len, kv_len, s.device)[:, None]
        kv = torch.arange(kv_len, device=s.device)[None, :]
        s = s + alibi_slopes.to(s.dtype)[:, None, None] * (kv - qp).to(s.dtype)[None]
    if soft_cap:
        s = soft_cap * torch.tanh(s / soft_cap)
    return s


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The ALiBi paper's geometric slopes (also for head counts that are not powers of two)."""
    import math

    def pow2_slopes(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = pow2_slopes(num_heads)
    else:
        p = 2 ** math.floor(math.log2(num_heads))
        slopes = pow2_slopes(p) + pow2_slopes(2 * p)[0::2][: num_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)
