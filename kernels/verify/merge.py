"""Verify cases for the merge-states kernels: random partial states combined by log-sum-exp.

Each output row n merges the partial rows merge_indices[merge_indptr[n] .. merge_indptr[n+1]), drawn
from a shuffled pool; some rows get no partial state at all and must be left untouched (still
poisoned), as api.h says.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ...variants import Variant
from ..accuracy import Comparison, compare, poison_, unwritten
from .cases import DTYPES

HEAD_DIMS = (64, 128, 256)


@dataclass(frozen=True)
class MergeCase:
    seed: int
    counts: tuple[int, ...]  # partial states per output row
    num_heads: int
    head_dim: int

    def describe(self) -> str:
        return (
            f"rows {len(self.counts)}, states/row {min(self.counts)}..{max(self.counts)}, "
            f"heads {self.num_heads}, hd {self.head_dim}"
        )

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "counts": list(self.counts),
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
        }


def random_merge_cases(rng: random.Random, count: int, max_rows: int = 300) -> list[MergeCase]:
    cases = []
    for i in range(count):
        rows = rng.randint(1, max_rows)
        counts = [rng.choice((0, 1, 2, rng.randint(1, 17))) for _ in range(rows)]
        if i == 0:
            counts[:3] = [0, 1, 16][: len(counts)]
        heads, head_dim = rng.choice((1, 8, 32)), rng.choice(HEAD_DIMS)
        cases.append(MergeCase(rng.getrandbits(62), tuple(counts), heads, head_dim))
    return cases


def merge_inputs(case: MergeCase, device) -> dict:
    g = torch.Generator().manual_seed(case.seed)
    entries = sum(case.counts)
    pool = entries + 5  # partial rows nobody merges
    partial_o = torch.randn(pool, case.num_heads, case.head_dim, generator=g)
    partial_lse = 3 * torch.randn(pool, case.num_heads, generator=g)
    partial_lse[torch.rand(pool, case.num_heads, generator=g) < 0.05] = float("-inf")  # states with no key
    indices = torch.randperm(pool, generator=g)[:entries].int()
    indptr = torch.tensor([0, *torch.tensor(case.counts).cumsum(0).tolist()], dtype=torch.int32)
    tensors = {
        "partial_o": partial_o,
        "partial_lse": partial_lse,
        "merge_indptr": indptr,
        "merge_indices": indices,
    }
    return {k: t.to(device) for k, t in tensors.items()}


def reference_merge(x: dict, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """o [rows, H, D] and lse [rows, H], computed in `dtype`. Rows with no state come back as NaN (the
    kernel leaves them untouched); rows whose states all saw no key as o = 0, lse = -inf."""
    indptr, indices = x["merge_indptr"].long(), x["merge_indices"].long()
    counts = indptr[1:] - indptr[:-1]
    row = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)  # per entry
    s, v = x["partial_lse"][indices].to(dtype), x["partial_o"][indices].to(dtype)  # (E, H), (E, H, D)
    shape = (counts.shape[0], s.shape[1])
    peak = torch.full(shape, float("-inf"), dtype=dtype, device=s.device)
    peak = peak.scatter_reduce(0, row[:, None].expand_as(s), s, "amax")
    weight = torch.exp(s - peak[row]).nan_to_num(0.0)  # all -inf: exp(nan) -> 0
    total = torch.zeros(shape, dtype=dtype, device=s.device).index_add(0, row, weight)
    lse = peak + torch.log(total)
    o = torch.zeros(*shape, v.shape[2], dtype=dtype, device=s.device).index_add(0, row, weight[..., None] * v)
    o = torch.where(total[..., None] > 0, o / total[..., None], torch.zeros((), dtype=dtype, device=s.device))
    empty = counts == 0
    o[empty], lse[empty] = float("nan"), float("nan")
    return o, lse


def run_merge_case(variant: Variant, case: MergeCase, device, factor: float) -> tuple[Comparison, Comparison]:
    """The merge kernel (ops.merge_states) on a GPU; on the CPU the emulation's merge, in float64."""
    x = merge_inputs(case, device)
    shape = (len(case.counts), case.num_heads)
    out_dtype = torch.float64 if device == "cpu" else DTYPES[variant.q_dtype]
    o = poison_(torch.empty(*shape, case.head_dim, dtype=out_dtype, device=device))
    lse_dtype = torch.float64 if device == "cpu" else torch.float32
    lse = poison_(torch.empty(shape, dtype=lse_dtype, device=device))
    args = (x["partial_o"], x["partial_lse"], x["merge_indptr"], x["merge_indices"], o, lse)
    if device == "cpu":
        from .. import emulate

        emulate.merge_states(*args)
    else:
        from .. import ops

        ops.merge_states(*args)
        torch.cuda.synchronize()
    return compare_merge(o, lse, x, case, factor)


def compare_merge(o, lse, x: dict, case: MergeCase, factor: float) -> tuple[Comparison, Comparison]:
    """Compare kernel output with the reference; rows without a state must still hold the poison."""
    ref_o, ref_lse = reference_merge(x, torch.float64)
    low_o, low_lse = reference_merge(x, torch.float32)  # the inputs are float32: only the store rounds
    low_o = low_o.to(o.dtype)
    untouched = torch.tensor([c == 0 for c in case.counts], device=o.device)
    empty = (ref_lse == float("-inf")) & ~untouched[:, None]
    overwritten = int((~unwritten(o[untouched])).sum() + (~unwritten(lse[untouched])).sum())
    keep = ~untouched
    o_cmp = compare(o[keep], ref_o[keep], low_o[keep], empty_rows=empty[keep], factor=factor)
    lse_cmp = compare(
        lse[keep],
        ref_lse[keep],
        low_lse[keep],
        empty_rows=empty[keep],
        empty_value=float("-inf"),
        factor=factor,
    )
    o_cmp.empty_row_errors += overwritten  # writing a row that has no state is the same class of bug
    return o_cmp, lse_cmp
