"""The peers bench times on the same inputs: PyTorch SDPA per backend, and FlexAttention compiled.

A builder turns (workload, DenseInputs) into a `Baseline`: a call to time and a way to read its output
back as packed [total_q, Hq, D] for the accuracy check; it raises `Unsupported` naming the reason when
the peer cannot compute the workload (a soft-cap in SDPA, GQA on a backend without it that would not
fit expanded, ...). Uniform batches run as one batched call; variable-length batches run SDPA once per
request (what a user without a varlen kernel does) and FlexAttention once over the packed tokens with
a document mask.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...variants import hooks
from .inputs import DenseInputs
from .workloads import Workload

SDPA_BACKENDS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
}
BASELINES = (*SDPA_BACKENDS, "flex")


class Unsupported(Exception):
    """The peer cannot run this workload; the message says why."""


@dataclass
class Baseline:
    call: Callable[[], object]
    packed_output: Callable[[object], torch.Tensor]  # call's result -> [total_q, Hq, D]
    note: str = ""


def build(name: str, w: Workload, d: DenseInputs) -> Baseline:
    if name in SDPA_BACKENDS:
        return _sdpa(SDPA_BACKENDS[name], w, d)
    if name == "flex":
        return _flex(w, d)
    raise ValueError(f"unknown baseline {name!r}; baselines are {', '.join(BASELINES)}")


def _note(w: Workload) -> str:
    notes = []
    if w.kv_dtype != w.q_dtype:
        notes.append(f"reads {w.q_dtype} KV")
    if w.pos == "rope":
        notes.append("RoPE applied untimed")
    if w.shared_prefix:
        notes.append("prefix copied per request")
    return ", ".join(notes)


# ---- SDPA ---------------------------------------------------------------------------------------


def _sdpa(backend_name: str, w: Workload, d: DenseInputs) -> Baseline:
    if w.soft_cap:
        raise Unsupported("SDPA has no logits soft-cap")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)
    scale = w.head_dim**-0.5
    note = _note(w)
    if d.qb is not None:
        q, k, v = (t.transpose(1, 2) for t in (d.qb, d.kb, d.vb))  # (B, H, S, D)
        kwargs = _sdpa_mask(w, q.shape[2], k.shape[2], d.alibi_slopes, q.dtype, q.device)
        kwargs, k, v, expanded = _gqa(backend, sdpa_kernel, q, k, v, scale, kwargs)
        note = ", ".join(filter(None, [note, expanded]))

        def call():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, scale=scale, **kwargs)

        _probe(call)
        return Baseline(call, _packed_batched, note)
    per_request = []
    for q_r, k_r, v_r in zip(d.q, d.k, d.v, strict=True):
        if not len(q_r):
            continue
        q, k, v = q_r.transpose(0, 1)[None], k_r.transpose(0, 1)[None], v_r.transpose(0, 1)[None]
        kwargs = _sdpa_mask(w, q.shape[2], k.shape[2], d.alibi_slopes, q.dtype, q.device)
        kwargs, k, v, _ = _gqa(backend, sdpa_kernel, q, k, v, scale, kwargs)
        per_request.append((q, k, v, kwargs))

    def call_loop():
        with sdpa_kernel(backend):
            return [F.scaled_dot_product_attention(q, k, v, scale=scale, **kw) for q, k, v, kw in per_request]

    _probe(call_loop)
    packed = lambda outs: torch.cat([o[0].transpose(0, 1) for o in outs])  # noqa: E731
    return Baseline(call_loop, packed, ", ".join(filter(None, [note, "one call per request"])))


def _packed_batched(o: torch.Tensor) -> torch.Tensor:
    """(B, Hq, S, D) -> (B * S, Hq, D)."""
    return o.transpose(1, 2).reshape(-1, o.shape[1], o.shape[3])


def _sdpa_mask(w: Workload, q_len: int, kv_len: int, slopes, dtype, device) -> dict:
    """SDPA's mask arguments for the workload's mask and ALiBi, queries aligned to the end of the KV."""
    if w.pos != "alibi" and w.mask in ("none", "causal") and (w.mask == "none" or q_len == 1):
        return {}
    if w.pos != "alibi" and w.mask == "causal":
        if q_len == kv_len:
            return {"is_causal": True}
        from torch.nn.attention.bias import causal_lower_right

        return {"attn_mask": causal_lower_right(q_len, kv_len)}
    keep = hooks.mask_keep(w.mask, q_len, kv_len, window_left=w.window_left, device=device)
    if w.pos != "alibi":
        return {"attn_mask": keep}
    qp = hooks.query_positions(q_len, kv_len, keep.device)[:, None]
    distance = (torch.arange(kv_len, device=keep.device)[None, :] - qp).float()
    bias = slopes.float()[:, None, None] * distance[None]  # (Hq, q_len, kv_len)
    return {"attn_mask": bias.masked_fill(~keep[None], float("-inf")).to(dtype)}


def _gqa(backend, sdpa_kernel, q, k, v, scale, kwargs):
    """Prefer SDPA's own GQA; when the backend refuses it, expand the KV heads (a copy) if it fits."""
    if q.shape[1] == k.shape[1]:
        return kwargs, k, v, ""
    try:
        with sdpa_kernel(backend), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a refusing backend explains itself in several warnings
            F.scaled_dot_product_attention(
                q[:1, :, :1], k[:1, :, :1], v[:1, :, :1], scale=scale, enable_gqa=True
            )
        return {**kwargs, "enable_gqa": True}, k, v, ""
    except RuntimeError:
        group = q.shape[1] // k.shape[1]
        need = 2 * k.numel() * group * k.element_size()
        if need > torch.cuda.mem_get_info()[0] // 2:
            raise Unsupported("backend has no GQA and the expanded KV would not fit") from None
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return kwargs, k, v, "KV heads expanded (no GQA in this backend)"


def _probe(call) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
        except RuntimeError as e:
            reasons = [str(w.message).split(" (Triggered")[0].strip() for w in caught]
            reasons = [r for r in reasons if not r.endswith(":") and "runtime disabled" not in r]
            reason = "; ".join(dict.fromkeys(reasons)) or str(e).splitlines()[0]
            raise Unsupported(reason[:200]) from None


# ---- FlexAttention ------------------------------------------------------------------------------


@functools.cache
def _compiled_flex():
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    # One compiled graph per shape and score_mod: the default cache limit (8) would silently fall back
    # to the eager (unfused, memory-hungry) path part-way through a bench run.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    torch._dynamo.config.accumulated_cache_size_limit = max(
        torch._dynamo.config.accumulated_cache_size_limit, 4096
    )
    return torch.compile(flex_attention, dynamic=False)


@dataclass
class _FlexLayout:
    """q, k, v as [B, H, S, D]; each token's position in its request; a mask of what else is valid."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_pos: Callable
    k_pos: Callable
    valid: Callable | None  # (b, i, j) -> keep, for documents or padding
    packed_output: Callable[[torch.Tensor], torch.Tensor]
    note: str = ""


def _flex_layout(d: DenseInputs) -> _FlexLayout:
    """Uniform batches as they are; variable-length decode with keys padded to the longest request
    (packed decode tokens hit an inductor lowering error in torch 2.11); other batches packed, one
    document per request."""
    if d.qb is not None:
        q, k, v = (t.transpose(1, 2) for t in (d.qb, d.kb, d.vb))
        shift = k.shape[2] - q.shape[2]
        return _FlexLayout(q, k, v, lambda b, i: i + shift, lambda b, j: j, None, _packed_batched)
    device = d.q[0].device
    if all(len(t) == 1 for t in d.q):
        lens = torch.tensor([len(t) for t in d.k], device=device)
        k, v = (_padded(ts).transpose(1, 2) for ts in (d.k, d.v))
        q = torch.stack(d.q).transpose(1, 2)
        return _FlexLayout(
            q,
            k,
            v,
            lambda b, i: lens[b] - 1 + i,
            lambda b, j: j,
            lambda b, i, j: j < lens[b],
            _packed_batched,
            "keys padded to the longest",
        )
    q = torch.cat(d.q).transpose(0, 1)[None]
    k, v = torch.cat(d.k).transpose(0, 1)[None], torch.cat(d.v).transpose(0, 1)[None]
    q_doc, q_off = _doc_positions([len(t) for t in d.q], [len(t) for t in d.k], device)
    k_doc, k_off = _doc_positions([len(t) for t in d.k], [len(t) for t in d.k], device, keys=True)
    return _FlexLayout(
        q,
        k,
        v,
        lambda b, i: q_off[i],
        lambda b, j: k_off[j],
        lambda b, i, j: q_doc[i] == k_doc[j],
        lambda o: o[0].transpose(0, 1),
        "packed, document mask",
    )


def _padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[len_r, H, D] per request -> [B, max len, H, D], zero-padded (the mask hides the padding)."""
    out = tensors[0].new_zeros(len(tensors), max(len(t) for t in tensors), *tensors[0].shape[1:])
    for r, t in enumerate(tensors):
        out[r, : len(t)] = t
    return out


def _flex(w: Workload, d: DenseInputs, *, compiled: bool = True) -> Baseline:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    attend = _compiled_flex() if compiled else flex_attention
    lay = _flex_layout(d)
    cap, slopes = w.soft_cap, d.alibi_slopes

    def mask_mod(b, h, i, j):
        if w.mask in ("causal", "sliding_window"):
            keep = lay.k_pos(b, j) <= lay.q_pos(b, i)
        else:
            keep = j >= 0
        if w.mask == "sliding_window":
            keep = keep & (lay.k_pos(b, j) >= lay.q_pos(b, i) - w.window_left)
        return keep if lay.valid is None else keep & lay.valid(b, i, j)

    def score_mod(score, b, h, i, j):
        if slopes is not None:
            score = score + slopes[h] * (lay.k_pos(b, j) - lay.q_pos(b, i))
        if cap:
            score = cap * torch.tanh(score / cap)
        return score

    block_mask = None
    if w.mask != "none" or lay.valid is not None:
        batch = lay.q.shape[0] if lay.valid is not None else None
        lengths = (lay.q.shape[2], lay.k.shape[2])
        block_mask = create_block_mask(mask_mod, batch, None, *lengths, device=lay.q.device)
    use_score_mod = slopes is not None or bool(cap)
    gqa = lay.q.shape[1] != lay.k.shape[1]

    def call():
        return attend(
            lay.q,
            lay.k,
            lay.v,
            score_mod=score_mod if use_score_mod else None,
            block_mask=block_mask,
            scale=w.head_dim**-0.5,
            enable_gqa=gqa,
        )

    try:
        call()
    except Exception as e:  # compile errors surface as many types; the message is what users need
        raise Unsupported(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    return Baseline(call, lay.packed_output, ", ".join(filter(None, [_note(w), lay.note])))


def _doc_positions(lengths, kv_lengths, device, keys: bool = False):
    """Per packed token: its request, and its position in that request's KV (queries sit at the end)."""
    doc = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
    )
    starts = torch.tensor([0, *lengths], device=device).cumsum(0)[:-1]
    offset = torch.arange(int(sum(lengths)), device=device) - starts[doc]
    if not keys:
        shift = torch.tensor(kv_lengths, device=device) - torch.tensor(lengths, device=device)
        offset = offset + shift[doc]
    return doc, offset
