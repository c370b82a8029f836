"""Executes a scheduler plan on the CPU with PyTorch, so CI checks plans without a GPU.

`check_plan` proves a work list right on its own (every visible (request, query head, key) reaches
the output exactly once, no two items write the same place, every merged partial row is written);
`execute` runs the work items as the kernels would (partial attention per item, with the variant
semantics of variants/hooks.py) and then `merge_states`, the log-sum-exp merge the merge kernel does.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..variants import hooks
from .scheduler import PADDING_ITEM, Plan, _visible


class PlanError(AssertionError):
    """A plan that would compute a wrong result; the message says where."""


def check_plan(
    p: Plan,
    qo_lens,
    kv_lens,
    *,
    num_qo_heads: int,
    num_kv_heads: int,
    cta_tile_q: int,
    mask: str = "none",
    window_left: int = -1,
) -> None:
    """Raise PlanError unless the plan computes every output row of the batch exactly once."""
    kv = np.asarray(kv_lens, dtype=np.int64).reshape(-1)
    qo = np.ones_like(kv) if qo_lens is None else np.asarray(qo_lens, dtype=np.int64).reshape(-1)
    group = num_qo_heads // num_kv_heads
    work = p.work.astype(np.int64)
    real, padding = work[: p.num_items], work[p.num_items :]
    if padding.shape[0] and not (padding == np.array(PADDING_ITEM)).all():
        raise PlanError("padding items must all be (-1, 0, 0, 0, 0, -1)")
    req, qb, qe, kb, ke, prow = real.T
    if ((req < 0) | (req >= kv.shape[0])).any():
        raise PlanError("a real item names no request of the batch")
    if ((qb < 0) | (qe <= qb) | (qe > qo[req] * group) | (qe - qb > cta_tile_q)).any():
        raise PlanError("an item's packed query rows are empty, out of range or longer than cta_tile_q")
    if ((kb < 0) | (ke < kb) | (ke > kv[req])).any():
        raise PlanError("an item's key range is out of range")

    token_start = np.cumsum(qo) - qo
    num_tokens = int(qo.sum())
    direct = _writers(
        p.num_items, prow < 0, token_start[req] * group + qb, qe - qb, num_tokens * group, "output"
    )
    partial_start = prow * group + qb - (qb // group) * group
    partial = _writers(p.num_items, prow >= 0, partial_start, qe - qb, p.num_partial_rows * group, "partial")

    indptr, indices = p.merge_indptr.astype(np.int64), p.merge_indices.astype(np.int64)
    if indptr.shape[0] < num_tokens + 1 or (indptr[num_tokens:] != indptr[num_tokens]).any():
        raise PlanError("merge_indptr must cover every token and stay flat past the last one")
    tok_req = np.repeat(np.arange(kv.shape[0]), qo)
    token = np.arange(num_tokens) - token_start[tok_req]
    lo, hi = _visible(tok_req, token, token, qo, kv, mask, window_left)
    heads = np.arange(group)
    for t in range(num_tokens):
        rows = t * group + heads
        merged = indices[indptr[t] : indptr[t + 1]]
        if merged.shape[0]:
            if (direct[rows] >= 0).any():
                raise PlanError(f"token {t} is both written directly and merged")
            if ((merged < 0) | (merged >= p.num_partial_rows)).any():
                raise PlanError(f"token {t} merges a partial row out of range")
            writers = partial[merged[:, None] * group + heads[None, :]]  # (entries, group)
            if (writers < 0).any():
                raise PlanError(f"token {t} merges a partial row that no item writes")
            wrote_token = merged[:, None] - prow[writers] + qb[writers] // group
        else:
            writers = direct[rows][None, :]
            if (writers < 0).any():
                raise PlanError(f"token {t} (request {tok_req[t]}) is never written")
            wrote_token = token[t]  # the output row space is indexed by token, so only the request can be off
        if (req[writers] != tok_req[t]).any() or (wrote_token != token[t]).any():
            raise PlanError(f"token {t} receives rows computed for another token")
        _check_partition(kb[writers], ke[writers], int(lo[t]), int(hi[t]), t)


def _writers(num_items, selected, starts, lengths, size, space):
    """Item index writing each row of a row space (-1: none); raises on double writes."""
    owner = np.full(size, -1, dtype=np.int64)
    for i in np.nonzero(selected)[0]:
        start, stop = int(starts[i]), int(starts[i] + lengths[i])
        if start < 0 or stop > size:
            raise PlanError(f"item {i} writes {space} rows [{start}, {stop}) outside [0, {size})")
        if (owner[start:stop] >= 0).any():
            raise PlanError(f"item {i} writes {space} rows [{start}, {stop}) that another item writes too")
        owner[start:stop] = i
    return owner


def _check_partition(begins, ends, lo, hi, t):
    """Per head (column): the key ranges clipped to [lo, hi) must tile it with no gap or overlap."""
    b, e = np.clip(begins, lo, hi), np.clip(ends, lo, hi)
    for h in range(b.shape[1]):
        keep = e[:, h] > b[:, h]
        bh, eh = np.sort(b[keep, h]), np.sort(e[keep, h])
        covered = bh.shape[0] == 0 if hi == lo else (bh.shape[0] > 0 and bh[0] == lo and eh[-1] == hi)
        if not covered or (bh[1:] != eh[:-1]).any():
            raise PlanError(f"token {t}, head {h}: keys [{lo}, {hi}) are not covered exactly once")


def execute(
    p: Plan,
    q: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    qo_lens,
    *,
    dtype: torch.dtype = torch.float64,
    **variant,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the plan's items as the kernels do, then the merge. q: [total_q, Hq, D]; keys[r], values[r]:
    [kv_len, Hkv, D]; variant: the reference's keywords (mask, pos, sm_scale, soft_cap, window_left,
    custom_masks (one [q_len, kv_len] bool tensor per request), alibi_slopes, rope_theta, rope_scale).

    Returns o [total_q, Hq, D] and lse [total_q, Hq] in `dtype`; outputs and partial states start as
    NaN, so a row the plan never writes shows."""
    o, lse = _poisoned(q, q.shape[0], dtype)
    partial_o, partial_lse = _poisoned(q, max(p.num_partial_rows, 1), dtype)
    run_items(p.work[: p.num_items], q, keys, values, qo_lens, o, lse, partial_o, partial_lse, **variant)
    merge_states(partial_o, partial_lse, p.merge_indptr, p.merge_indices, o, lse)
    return o, lse


def execute_cascade(cp, q, level_keys, level_values, *, dtype: torch.dtype = torch.float64, **variant):
    """A kernels/cascade.py plan: every launch's items into one partial buffer, then one merge across
    levels. level_keys[l][r], level_values[l][r]: [kv_len, Hkv, D] of level l's request r; a launch's
    request i is the i-th of its levels' requests, reading its queries from its first token."""
    o, lse = _poisoned(q, q.shape[0], dtype)
    partial_o, partial_lse = _poisoned(q, max(cp.num_partial_rows, 1), dtype)
    for launch in cp.launches:
        keys = [k for level in launch.levels for k in level_keys[level]]
        values = [v for level in launch.levels for v in level_values[level]]
        run_items(
            launch.work,
            q,
            keys,
            values,
            launch.qo_lens,
            o,
            lse,
            partial_o,
            partial_lse,
            first_token=launch.first_token,
            mask=launch.mask,
            **variant,
        )
    merge_states(partial_o, partial_lse, cp.merge_indptr, cp.merge_indices, o, lse)
    return o, lse


def _poisoned(q, rows, dtype):
    nan = float("nan")
    return torch.full((rows, *q.shape[1:]), nan, dtype=dtype), torch.full(
        (rows, q.shape[1]), nan, dtype=dtype
    )


def run_items(
    work: np.ndarray,
    q,
    keys,
    values,
    qo_lens,
    o,
    lse,
    partial_o,
    partial_lse,
    *,
    custom_masks: list[torch.Tensor] | None = None,
    first_token=None,
    **variant,
) -> None:
    """The attention kernel's part: every work item (the real ones, int [n, 6]) for every KV head,
    written to o/lse or to the partial states, exactly where the kernels write (api.h fib_work_item).
    first_token: each request's first query token (the decode kernel's stacked queries, api.h), else
    qo_lens' prefix sums."""
    num_kv_heads = keys[0].shape[1] if keys else 1
    group = q.shape[1] // num_kv_heads
    qo = np.ones(len(keys), np.int64) if qo_lens is None else np.asarray(qo_lens, np.int64)
    token_start = np.concatenate([[0], np.cumsum(qo)]) if first_token is None else np.asarray(first_token)
    logits = {}
    for req, qb, qe, kb, ke, prow in work.tolist():
        if req not in logits:
            custom_mask = custom_masks[req] if custom_masks is not None else None
            q_r = q[token_start[req] : token_start[req] + qo[req]]
            logits[req] = _logits(q_r, keys[req], custom_mask=custom_mask, dtype=o.dtype, **variant)
        s_all, v = logits[req], values[req].to(o.dtype)
        packed = torch.arange(qb, qe)
        token, head_in_group = packed // group, packed % group
        for kv_head in range(num_kv_heads):
            head = kv_head * group + head_in_group
            s = s_all[head, token, kb:ke]  # (rows, keys)
            row_lse = torch.logsumexp(s, dim=-1)
            weights = torch.exp(s - row_lse[:, None]).nan_to_num(0.0)
            row_o = torch.einsum("rk,kd->rd", weights, v[kb:ke, kv_head])
            if prow < 0:
                o[token_start[req] + token, head], lse[token_start[req] + token, head] = row_o, row_lse
            else:
                dest = prow + token - qb // group
                partial_o[dest, head], partial_lse[dest, head] = row_o, row_lse


def merge_states(partial_o, partial_lse, merge_indptr, merge_indices, o, lse=None) -> None:
    """The merge kernel's contract (api.h fib_merge_params): row n of o (and lse) becomes the
    softmax-weighted combination of partial rows merge_indices[merge_indptr[n]:merge_indptr[n+1]];
    rows with an empty range are left untouched. All -inf: o = 0, lse = -inf."""
    indptr = np.asarray(merge_indptr, dtype=np.int64)
    indices = torch.as_tensor(np.asarray(merge_indices, dtype=np.int64))
    for n in np.nonzero(np.diff(indptr[: o.shape[0] + 1]))[0].tolist():
        rows = indices[indptr[n] : indptr[n + 1]]
        s = partial_lse[rows].to(o.dtype)  # (entries, heads)
        merged_lse = torch.logsumexp(s, dim=0)
        weights = torch.exp(s - merged_lse[None]).nan_to_num(0.0)
        o[n] = torch.einsum("eh,ehd->hd", weights, partial_o[rows].to(o.dtype)).to(o.dtype)
        if lse is not None:
            lse[n] = merged_lse.to(lse.dtype)


def _logits(
    q,
    k,
    *,
    mask="none",
    pos="none",
    sm_scale=None,
    soft_cap=None,
    window_left=-1,
    custom_mask=None,
    alibi_slopes=None,
    rope_theta=1e4,
    rope_scale=1.0,
    dtype=torch.float64,
):
    """Masked, transformed logits [Hq, q_len, kv_len] of one request (-inf where masked), built from
    the same hooks as kernels/reference.py."""
    q_len, num_qo_heads, head_dim = q.shape
    kv_len, num_kv_heads, _ = k.shape
    sm_scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    qf, kf = q.to(dtype), k.to(dtype)
    if pos == "rope":
        qf = hooks.apply_rope(qf, hooks.query_positions(q_len, kv_len), rope_theta, rope_scale)
        kf = hooks.apply_rope(kf, torch.arange(kv_len), rope_theta, rope_scale)
    kf = kf.repeat_interleave(num_qo_heads // num_kv_heads, dim=1)
    s = hooks.logits_transform(
        torch.einsum("qhd,khd->hqk", qf, kf),
        sm_scale=sm_scale,
        q_len=q_len,
        kv_len=kv_len,
        pos=pos,
        alibi_slopes=alibi_slopes,
        soft_cap=soft_cap,
    )
    keep = hooks.mask_keep(mask, q_len, kv_len, window_left=window_left, custom_mask=custom_mask)
    return s.masked_fill(~keep[None], float("-inf"))
