"""The tensors of one bench workload: a paged KV pool for our kernels and views of it for the baselines.

Pages are laid out in request order (verify covers shuffled page tables; the order does not change
the bytes a kernel moves at 16-token pages), so each request's keys are one contiguous slice of the
pool and a uniform batch is a strided [batch, kv_len, Hkv, D] view: the baselines read the very same
memory and a large batch fits once. A shared prefix occupies the first pages, which every request's
page table lists first; baselines, which have no page tables, get a dense copy with the prefix
repeated. Baselines read the KV in the query dtype: fp8 pools get a dequantized copy for them, and
RoPE rows get pre-rotated copies (a baseline's rotation is not timed).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ...variants import hooks
from ..verify.cases import DTYPES
from .workloads import Workload


@dataclass
class BenchInputs:
    """One input set. q/o packed [total_q, Hq, D]. Paged: k/v pools [pages, page_size, Hkv, D] with the
    page table; ragged (page_size 0): k/v [total_kv, Hkv, D]. prefix_pages: how many leading pages hold
    the shared prefix (cascade)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    qo_indptr: torch.Tensor
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor | None
    kv_last_page_len: torch.Tensor | None
    prefix_pages: int = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.k, self.v, self.o))


@dataclass
class DenseInputs:
    """What the baselines read: per request q [q_len, Hq, D] and k/v [kv_len, Hkv, D] in the query dtype,
    RoPE already applied where the workload uses it; and, for a uniform batch, [B, S, H, D] forms."""

    q: list[torch.Tensor]
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    qb: torch.Tensor | None = None
    kb: torch.Tensor | None = None
    vb: torch.Tensor | None = None
    alibi_slopes: torch.Tensor | None = None


def set_bytes(w: Workload) -> int:
    """Bytes of one input set (q, o and the KV pool), to choose how many sets to rotate through."""
    q_bytes = sum(w.q_lens) * w.num_qo_heads * w.head_dim * DTYPES[w.q_dtype].itemsize
    slots = _slots(w)
    kv_bytes = slots * w.num_kv_heads * w.head_dim * DTYPES[w.kv_dtype].itemsize
    return 2 * q_bytes + 2 * kv_bytes


def _slots(w: Workload) -> int:
    if w.page_size == 0:
        return sum(w.kv_lens)
    pages = _ceil(w.shared_prefix, w.page_size) + sum(_ceil(kv, w.page_size) for kv in w.kv_lens)
    return pages * w.page_size


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def make_inputs(w: Workload, device, generator: torch.Generator) -> BenchInputs:
    """Random inputs of `w`. Values are N(0, 1): never zeros, which run faster and hide bugs."""
    q_dtype, kv_dtype = DTYPES[w.q_dtype], DTYPES[w.kv_dtype]
    total_q = sum(w.q_lens)
    q = _randn((total_q, w.num_qo_heads, w.head_dim), q_dtype, device, generator)
    qo_indptr = _indptr(w.q_lens, device)
    rows = (_slots(w), w.num_kv_heads, w.head_dim)
    k = _randn(rows, kv_dtype, device, generator)
    v = _randn(rows, kv_dtype, device, generator)
    o = torch.empty_like(q)
    if w.page_size == 0:
        return BenchInputs(q, k, v, o, qo_indptr, _indptr(w.kv_lens, device), None, None)
    ps = w.page_size
    prefix_pages = _ceil(w.shared_prefix, ps)
    if w.shared_prefix % ps:
        raise ValueError(f"{w.name}: the shared prefix must fill whole pages of {ps}")
    own = [_ceil(kv, ps) for kv in w.kv_lens]
    first_own = list(itertools.accumulate([prefix_pages, *own]))
    table = [[*range(prefix_pages), *range(first_own[r], first_own[r] + n)] for r, n in enumerate(own)]
    kv_indices = torch.tensor([p for pages in table for p in pages], dtype=torch.int32, device=device)
    kv_indptr = _indptr([len(pages) for pages in table], device)
    last = [(kv + w.shared_prefix - 1) % ps + 1 if kv + w.shared_prefix else 0 for kv in w.kv_lens]
    kv_last_page_len = torch.tensor(last, dtype=torch.int32, device=device)
    shape = (-1, ps, w.num_kv_heads, w.head_dim)
    return BenchInputs(
        q, k.view(shape), v.view(shape), o, qo_indptr, kv_indptr, kv_indices, kv_last_page_len, prefix_pages
    )


def _randn(shape, dtype, device, generator, chunk_bytes: int = 1 << 28) -> torch.Tensor:
    """N(0, 1) in `dtype`, drawn in float32 chunks: a 17 GB bf16 KV cache must not need 34 GB at once."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if not out.numel():
        return out
    rows_per_chunk = max(1, chunk_bytes // 4 // max(1, out[0].numel()))
    for part in out.split(rows_per_chunk):
        part.copy_(torch.randn(part.shape, device=device, generator=generator))
    return out


def _indptr(lengths, device) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


def dense_inputs(w: Workload, x: BenchInputs) -> DenseInputs:
    """The baselines' view of `x` (see the module docstring)."""
    q_dtype = DTYPES[w.q_dtype]
    flat_k = x.k.reshape(-1, w.num_kv_heads, w.head_dim)
    flat_v = x.v.reshape(-1, w.num_kv_heads, w.head_dim)
    if flat_k.dtype != q_dtype:
        flat_k, flat_v = flat_k.to(q_dtype), flat_v.to(q_dtype)
    starts = _request_starts(w)
    qs = [x.q[int(x.qo_indptr[r]) : int(x.qo_indptr[r + 1])] for r in range(len(w.q_lens))]
    prefix = w.shared_prefix
    ks, vs = [], []
    for r, kv in enumerate(w.kv_lens):
        k_r, v_r = flat_k[starts[r] : starts[r] + kv], flat_v[starts[r] : starts[r] + kv]
        if prefix:
            k_r, v_r = torch.cat([flat_k[:prefix], k_r]), torch.cat([flat_v[:prefix], v_r])
        ks.append(k_r)
        vs.append(v_r)
    if w.pos == "rope":
        qs = [
            _rope(q_r, torch.arange(kv - len(q_r), kv, device=q_r.device))
            for q_r, kv in zip(qs, w.total_kv_lens, strict=True)
        ]
        ks = [_rope(k_r, torch.arange(len(k_r), device=k_r.device)) for k_r in ks]
    dense = DenseInputs(qs, ks, vs)
    if w.pos == "alibi":
        dense.alibi_slopes = hooks.alibi_slopes(w.num_qo_heads).to(x.q.device)
    if len(set(w.q_lens)) == 1 and len(set(w.kv_lens)) == 1:
        dense.qb = x.q.view(len(w.q_lens), w.q_lens[0], w.num_qo_heads, w.head_dim)
        if w.pos == "rope":
            dense.qb = torch.stack(qs)
        dense.kb, dense.vb = _batched(w, ks, flat_k, starts), _batched(w, vs, flat_v, starts)
    return dense


def _batched(w: Workload, per_request, flat, starts) -> torch.Tensor:
    """[B, S, H, D]: a strided view of the pool when requests sit at equal strides, else a copy."""
    steps = {b - a for a, b in itertools.pairwise(starts)}
    if w.shared_prefix or w.pos == "rope" or len(steps) > 1:
        return torch.stack(per_request)
    step = steps.pop() if steps else 0
    kv, h, d = w.kv_lens[0], w.num_kv_heads, w.head_dim
    return flat.as_strided((len(w.kv_lens), kv, h, d), (step * h * d, h * d, d, 1), starts[0] * h * d)


def _request_starts(w: Workload) -> list[int]:
    """First pool row of each request's own keys."""
    if w.page_size == 0:
        return list(itertools.accumulate([0, *w.kv_lens]))[:-1]
    own = [_ceil(kv, w.page_size) * w.page_size for kv in w.kv_lens]
    return list(itertools.accumulate([w.shared_prefix, *own]))[:-1]


def _rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return hooks.apply_rope(x.float(), pos, 1e4, 1.0).to(x.dtype)
