"""The accuracy rule and output poisoning (kernels/accuracy.py) catch the bugs verify exists for."""

from __future__ import annotations

import pytest
import torch
from flashinfer_build.kernels import accuracy, reference


def _attention_case(dtype=torch.bfloat16, q_len=9, kv_len=70):
    """A kernel-like output (float32 math, stored in `dtype`) and its float64 and low-precision references."""
    q = torch.randn(q_len, 8, 64).to(dtype)
    k, v = torch.randn(kv_len, 2, 64).to(dtype), torch.randn(kv_len, 2, 64).to(dtype)
    ref, ref_lse = reference.attention(q, k, v, mask="causal", dtype=torch.float64)
    low, low_lse = reference.attention(q, k, v, mask="causal", dtype=dtype)
    out32, lse32 = reference.attention(q, k, v, mask="causal", dtype=torch.float32)
    return out32.to(dtype).contiguous(), lse32, (ref, low), (ref_lse, low_lse)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_poison_marks_unwritten_elements_only(dtype):
    t = accuracy.poisoned_like(torch.empty(4, 3, dtype=dtype))
    assert torch.isnan(t).all() and accuracy.unwritten(t).all()
    t[1] = torch.randn(3).to(dtype)
    t[2, 0] = float("nan")  # a NaN that arithmetic made: not the poison pattern
    assert accuracy.unwritten(t).tolist() == [[True] * 3, [False] * 3, [False, True, True], [True] * 3]


def test_correct_output_passes():
    out, lse, (ref, low), (ref_lse, low_lse) = _attention_case()
    cmp = accuracy.compare(out, ref, low)
    assert cmp.passed, cmp.problem()
    assert 0 < cmp.max_abs_err <= cmp.tolerance
    assert accuracy.compare(lse, ref_lse, low_lse).passed


def test_wrong_element_fails():
    out, _, (ref, low), _ = _attention_case()
    tq, th, td = torch.randint(0, out.shape[0], ()), torch.randint(0, 8, ()), torch.randint(0, 64, ())
    out[tq, th, td] += 0.5
    cmp = accuracy.compare(out, ref, low)
    assert not cmp.passed
    assert cmp.max_abs_err > cmp.tolerance
    assert "tolerance" in cmp.problem()


def test_unwritten_row_fails():
    out, _, (ref, low), _ = _attention_case()
    row = int(torch.randint(0, out.shape[0], ()))
    accuracy.poison_(out[row])
    cmp = accuracy.compare(out, ref, low)
    assert not cmp.passed
    assert cmp.unwritten == out[row].numel() and cmp.nan == 0
    assert "never written" in cmp.problem()


def test_computed_nan_fails():
    out, _, (ref, low), _ = _attention_case()
    out.view(-1)[int(torch.randint(0, out.numel(), ()))] = float("nan")
    cmp = accuracy.compare(out, ref, low)
    assert not cmp.passed and cmp.nan == 1 and cmp.unwritten == 0


def test_rows_without_keys_must_be_zero_and_minus_inf():
    out, lse, (ref, low), (ref_lse, low_lse) = _attention_case()
    empty = torch.zeros(ref_lse.shape, dtype=torch.bool)
    empty[2] = True
    ref, low, ref_lse, low_lse = ref.clone(), low.clone(), ref_lse.clone(), low_lse.clone()
    for t in (ref, low):
        t[2] = 0
    for t in (ref_lse, low_lse):
        t[2] = float("-inf")
    out[2], lse[2] = 0, float("-inf")
    assert accuracy.compare(out, ref, low, empty_rows=empty).passed
    assert accuracy.compare(lse, ref_lse, low_lse, empty_rows=empty, empty_value=float("-inf")).passed
    out[2, 0, 0] = 1e-3
    lse[2, 5] = -30.0
    assert accuracy.compare(out, ref, low, empty_rows=empty).empty_row_errors == 1
    lse_cmp = accuracy.compare(lse, ref_lse, low_lse, empty_rows=empty, empty_value=float("-inf"))
    assert lse_cmp.empty_row_errors == 1 and not lse_cmp.passed


def test_tolerance_follows_pytorchs_own_error():
    _, _, (ref, low), _ = _attention_case()
    own_error = float((low.double() - ref).abs().max())
    tol = accuracy.tolerance(ref, low, torch.bfloat16, factor=2.0)
    assert 2 * own_error < tol < 2 * own_error + 0.05
    assert accuracy.tolerance(ref, low, torch.bfloat16, factor=3.0) == pytest.approx(tol + own_error)


def test_merge_keeps_the_worst():
    a = accuracy.Comparison(2e-2, 1e-3, 1e-1, 10, 0, 0, 0)  # larger error, far inside its tolerance
    b = accuracy.Comparison(5e-3, 2e-4, 2e-3, 20, 1, 0, 0)  # smaller error past its tolerance
    m = accuracy.merge([a, b])
    assert (m.max_abs_err, m.rel_err, m.tolerance, m.elements, m.unwritten) == (5e-3, 1e-3, 2e-3, 30, 1)
    assert not m.passed
