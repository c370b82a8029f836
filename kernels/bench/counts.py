"""What one attention batch must compute and move: the FLOP and byte counts bench divides by time.

FLOPs count the two matrix products over the (query, key) pairs a query may see: 2 * D for q.k and
2 * D for p.v, per query head, per visible pair. The softmax's exponentials are not counted (the
common convention, so numbers compare with other benchmarks).

Bytes are the fewest any kernel must move through device memory: q read once, o written once (in the
query dtype; lse is not counted, the baselines do not write it), and each key and value row that at
least one query sees, read once. Shared-prefix batches count the prefix once: that is the point of
cascade attention, and what it is measured against.
"""

from __future__ import annotations

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp8e4m3": 1, "fp8e5m2": 1, "fp32": 4}


def visible_pairs(q_len: int, kv_len: int, mask: str = "none", window_left: int = -1) -> int:
    """How many (query, key) pairs of one request the mask keeps; queries sit at the end of the KV
    (query i at position kv_len - q_len + i), as in variants/hooks.py."""
    if not 0 <= q_len <= kv_len:
        raise ValueError(f"need 0 <= q_len <= kv_len, got q_len={q_len}, kv_len={kv_len}")
    if mask == "none":
        return q_len * kv_len
    if mask == "causal":
        return q_len * (kv_len - q_len) + q_len * (q_len + 1) // 2
    if mask == "sliding_window":
        if window_left < 0:
            return visible_pairs(q_len, kv_len, "causal")
        first, last = kv_len - q_len, kv_len - 1  # query positions p; each sees min(p, window_left) + 1 keys
        growing_end = min(last, window_left)  # positions whose window is cut off by key 0
        growing = _sum_range(first + 1, growing_end + 1) if first <= growing_end else 0
        full = max(0, last - max(first, window_left + 1) + 1) * (window_left + 1)
        return growing + full
    raise ValueError(f"bench counts no {mask!r} mask; masks: none, causal, sliding_window")


def visible_keys(q_len: int, kv_len: int, mask: str = "none", window_left: int = -1) -> int:
    """How many keys of one request at least one of its queries sees."""
    if q_len == 0:
        return 0
    if mask == "sliding_window" and window_left >= 0:
        return min(kv_len, q_len + window_left)
    return kv_len


def _sum_range(lo: int, hi: int) -> int:
    """lo + (lo + 1) + ... + hi."""
    return (lo + hi) * (hi - lo + 1) // 2


def attention_flops(
    q_lens, kv_lens, num_qo_heads: int, head_dim: int, mask: str = "none", window_left: int = -1
) -> int:
    pairs = sum(visible_pairs(q, kv, mask, window_left) for q, kv in zip(q_lens, kv_lens, strict=True))
    return 4 * num_qo_heads * head_dim * pairs


def attention_bytes(
    q_lens,
    kv_lens,
    num_qo_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    q_dtype: str = "bf16",
    kv_dtype: str = "bf16",
    mask: str = "none",
    window_left: int = -1,
    shared_prefix: int = 0,
) -> int:
    """Minimum device-memory traffic. With shared_prefix > 0, kv_lens are each request's own suffix and
    every request also sees the same `shared_prefix` keys before it, which are read once."""
    if shared_prefix and mask not in ("none", "causal"):
        raise ValueError(f"a shared prefix is counted for masks none and causal, not {mask!r}")
    q_tokens = sum(q_lens)
    keys = sum(
        visible_keys(q, kv + shared_prefix, mask, window_left) - (shared_prefix if q else 0)
        for q, kv in zip(q_lens, kv_lens, strict=True)
    )
    if shared_prefix and q_tokens:
        keys += shared_prefix
    qo = 2 * q_tokens * num_qo_heads * head_dim * DTYPE_BYTES[q_dtype]
    kv = 2 * keys * num_kv_heads * head_dim * DTYPE_BYTES[kv_dtype]
    return qo + kv
