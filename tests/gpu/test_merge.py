"""Merge-states kernels against a float64 log-sum-exp reference, one test per built merge variant."""

from __future__ import annotations

import random

import pytest
import torch
from flashinfer_build.kernels import accuracy, loader, ops
from flashinfer_build.kernels.checks import InvalidArgument, torch_dtype
from flashinfer_build.variants import parse_id
from test_decode import built_variants

pytestmark = pytest.mark.gpu


def reference_merge(partial_o, partial_lse, indptr, indices):
    """float64 merged (o, lse) per output row; rows without a state come back as None."""
    outs, lses = [], []
    for n in range(len(indptr) - 1):
        idx = indices[indptr[n] : indptr[n + 1]].long()
        if idx.numel() == 0:
            outs.append(None)
            lses.append(None)
            continue
        s = partial_lse[idx].double()  # (k, H)
        lse = torch.logsumexp(s, 0)
        w = torch.exp(s - lse).nan_to_num(0.0)  # all -inf: weights 0, o = 0
        outs.append(torch.einsum("kh,khd->hd", w, partial_o[idx].double()))
        lses.append(lse)
    return outs, lses


@pytest.mark.parametrize("head_dim", [64, 128, 256, 96])
@pytest.mark.parametrize("arch,variant_id", built_variants("merge"))
def test_merge_matches_reference(arch, variant_id, head_dim):
    dtype = torch_dtype(parse_id(variant_id).q_dtype)
    device = torch.device("cuda")
    rng = random.Random()
    heads = 8
    counts = [0, 1, 2, 7, 33, 80, 0, 3]  # states per output row: none, one, more than a warp
    rng.shuffle(counts)
    rows = sum(counts) + 5
    partial_o = torch.randn(rows, heads, head_dim, device=device)
    partial_lse = torch.randn(rows, heads, device=device) * 4
    partial_lse[torch.rand(rows, heads, device=device) < 0.2] = float("-inf")  # empty partial states
    perm = torch.randperm(rows, device=device)[: sum(counts)]
    partial_o[perm[:1]] = 0.0
    partial_lse[perm[:1]] = float("-inf")
    indptr = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()], dtype=torch.int32, device=device)
    indices = perm.to(torch.int32)
    o = accuracy.poisoned_like(torch.empty(len(counts), heads, head_dim, dtype=dtype, device=device))
    lse = accuracy.poison_(torch.empty(len(counts), heads, device=device))
    with loader.pinned_arch(arch):
        ops.merge_states(partial_o, partial_lse, indptr, indices, o, lse)
    torch.cuda.synchronize()
    ref_o, ref_lse = reference_merge(partial_o, partial_lse, indptr.tolist(), indices)
    for n, count in enumerate(counts):
        if count == 0:
            assert accuracy.unwritten(o[n]).all() and accuracy.unwritten(lse[n]).all(), (
                f"row {n} has no state"
            )
            continue
        empty = torch.isinf(ref_lse[n])
        o_cmp = accuracy.compare(o[n], ref_o[n], ref_o[n].to(dtype).double(), empty_rows=empty)
        lse_cmp = accuracy.compare(
            lse[n], ref_lse[n], ref_lse[n].float().double(), empty_rows=empty, empty_value=float("-inf")
        )
        assert o_cmp.passed, f"row {n} ({count} states) o: {o_cmp.problem()}"
        assert lse_cmp.passed or lse_cmp.max_abs_err < 1e-5, f"row {n} lse: {lse_cmp.problem()}"


@pytest.mark.parametrize("arch,variant_id", built_variants("merge"))
def test_merge_state_helpers(arch, variant_id):
    dtype = torch_dtype(parse_id(variant_id).q_dtype)
    device = torch.device("cuda")
    n, k, heads, d = 37, 5, 4, 128
    v = torch.randn(n, k, heads, d, device=device).to(dtype)
    s = torch.randn(n, k, heads, device=device) * 3
    with loader.pinned_arch(arch):
        o, lse = ops.merge_state_list(v, s)
        o2, lse2 = ops.merge_state(v[:, 0], s[:, 0], v[:, 1], s[:, 1])
    ref_lse = torch.logsumexp(s.double(), 1)
    ref_o = torch.einsum("nkh,nkhd->nhd", torch.exp(s.double() - ref_lse[:, None]), v.double())
    assert accuracy.compare(o, ref_o, ref_o.to(dtype).double()).passed
    assert torch.allclose(lse.double(), ref_lse, atol=1e-5)
    ref_lse2 = torch.logsumexp(s[:, :2].double(), 1)
    ref_o2 = torch.einsum(
        "nkh,nkhd->nhd", torch.exp(s[:, :2].double() - ref_lse2[:, None]), v[:, :2].double()
    )
    assert accuracy.compare(o2, ref_o2, ref_o2.to(dtype).double()).passed
    with pytest.raises(InvalidArgument, match="s_b must have shape"):
        ops.merge_state(v[:, 0], s[:, 0], v[:, 1], s[:1, 1])
    with pytest.raises(InvalidArgument, match="head dim must be a multiple of 4"):
        ops.merge_states(
            torch.zeros(2, 1, 6, device=device),
            torch.zeros(2, 1, device=device),
            torch.tensor([0, 2], dtype=torch.int32, device=device),
            torch.tensor([0, 1], dtype=torch.int32, device=device),
            torch.zeros(1, 1, 6, dtype=dtype, device=device),
        )
