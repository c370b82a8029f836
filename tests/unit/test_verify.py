"""verify on the CPU: random cases, the scheduler through its emulation, planted bugs, the report schema."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from flashinfer_build.kernels import accuracy, emulate, reference, scheduler, verify
from flashinfer_build.kernels.verify import cases as verify_cases
from flashinfer_build.kernels.verify import merge
from flashinfer_build.kernels.verify import run as verify_run
from flashinfer_build.variants import load_matrix, parse_id

CI = [v for v in load_matrix("ci") if v.arch == "sm90a"]
SEED = verify.new_seed()  # fresh cases every run; printed in failure messages

REPORT_KEYS = {
    "schema",
    "seed",
    "device",
    "gpu",
    "torch",
    "factor",
    "packs",
    "variants",
    "sanitize",
    "summary",
}
VARIANT_KEYS = {
    "id",
    "result",
    "cases",
    "max_abs_err",
    "max_rel_err",
    "tolerance",
    "seconds",
    "message",
    "case_results",
}
CASE_KEYS = {"index", "shape", "description", "passed", "error", "output", "lse"}
COMPARISON_KEYS = {
    "max_abs_err",
    "rel_err",
    "tolerance",
    "elements",
    "unwritten",
    "nan",
    "empty_row_errors",
    "passed",
}


def test_ci_preset_passes_through_the_emulation():
    report = verify.verify(CI, device="cpu", seed=SEED, cases=3)
    failures = {v.id: v.message for v in report.variants if v.result != "pass"}
    assert not failures, f"seed {SEED}: {failures}"
    assert report.passed and len(report.variants) == len(CI)


def test_report_schema():
    data = json.loads(json.dumps(verify.verify(CI[:2], device="cpu", seed=SEED, cases=2).to_dict()))
    assert set(data) == REPORT_KEYS and data["schema"] == verify.SCHEMA and data["seed"] == SEED
    assert data["summary"] == {"variants": 2, "passed": 2, "failed": 0, "errors": 0, "cases": 4}
    for v in data["variants"]:
        assert set(v) == VARIANT_KEYS and v["cases"] == 2
        for c in v["case_results"]:
            assert set(c) == CASE_KEYS
            assert set(c["output"]) == COMPARISON_KEYS and set(c["lse"]) == COMPARISON_KEYS


def test_the_seed_reproduces_the_cases():
    v = parse_id("prefill_sm90a_bf16_hd128_causal")
    first = verify_cases.random_cases(v, verify.variant_rng(SEED, v), 4)
    again = verify_cases.random_cases(v, verify.variant_rng(SEED, v), 4)
    other = verify_cases.random_cases(v, verify.variant_rng(SEED + 1, v), 4)
    assert first == again and first != other


@pytest.mark.parametrize("variant_id", ["decode_sm90a_bf16_hd128", "prefill_sm90a_bf16_hd128_causal"])
def test_cases_hold_the_edge_cases(variant_id):
    v = parse_id(variant_id)
    edge = verify_cases.random_cases(v, random.Random(SEED), 1)[0]
    unit = max(edge.page_size, 1)
    assert {0, 1}.issubset(edge.kv_lens), edge
    if unit > 1:
        assert any(n % unit for n in edge.kv_lens), edge
    if v.family == "decode":  # one query per request, also over no key at all
        assert set(edge.q_lens) == {1}
    else:
        assert any(0 < q == kv for q, kv in zip(edge.q_lens, edge.kv_lens, strict=True)), edge
        assert all(0 <= q <= kv for q, kv in zip(edge.q_lens, edge.kv_lens, strict=True))


def test_page_tables_are_shuffled_and_consistent():
    v = parse_id("decode_sm90a_bf16_hd128")
    rng = random.Random(SEED)
    cases = [c for c in verify_cases.random_cases(v, rng, 12) if c.page_size > 1 and sum(c.kv_lens) > 40]
    assert cases, f"seed {SEED}"
    shuffled = 0
    for case in cases:
        x = verify_cases.make_inputs(v, case, "cpu")
        pages = x.kv_indices.tolist()
        assert len(set(pages)) == len(pages) and max(pages) < x.k.shape[0]
        shuffled += pages != sorted(pages)
        for r, n in enumerate(case.kv_lens):
            assert x.request_kv(case, r)[0].shape[0] == n
    assert shuffled, f"seed {SEED}: no page table was shuffled"


def test_a_plan_that_drops_keys_is_an_error(monkeypatch):
    real_plan = scheduler.plan

    def dropping_plan(*args, **kwargs):
        p = real_plan(*args, **kwargs)
        work = p.work.copy()
        longest = int(np.argmax(work[: p.num_items, 4] - work[: p.num_items, 3]))
        work[longest, 4] -= 1  # one key fewer
        return scheduler.Plan(**{**p.__dict__, "work": work})

    monkeypatch.setattr(scheduler, "plan", dropping_plan)
    report = verify.verify([parse_id("decode_sm90a_bf16_hd128")], device="cpu", seed=SEED, cases=2)
    assert report.variants[0].result == "error"
    assert "not covered" in report.variants[0].message or "PlanError" in report.variants[0].message


def test_wrong_outputs_fail(monkeypatch):
    real = verify_run.run_emulated

    def off_by_a_bit(variant, case, x):
        o, lse = real(variant, case, x)
        live = torch.isfinite(lse)
        if live.any():
            t, h = [int(i[0]) for i in torch.nonzero(live, as_tuple=True)]
            o[t, h, 0] += 0.01
        return o, lse

    monkeypatch.setattr(verify_run, "run_emulated", off_by_a_bit)
    report = verify.verify([parse_id("prefill_sm90a_bf16_hd128_causal")], device="cpu", seed=SEED, cases=2)
    assert report.variants[0].result == "fail" and not report.passed
    assert "tolerance" in report.variants[0].message


def test_merge_must_leave_rows_without_states_untouched():
    case = merge.random_merge_cases(random.Random(SEED), 1)[0]
    x = merge.merge_inputs(case, "cpu")
    o = accuracy.poison_(torch.empty(len(case.counts), case.num_heads, case.head_dim, dtype=torch.float64))
    lse = accuracy.poison_(torch.empty(len(case.counts), case.num_heads, dtype=torch.float64))
    emulate.merge_states(x["partial_o"], x["partial_lse"], x["merge_indptr"], x["merge_indices"], o, lse)
    o_cmp, lse_cmp = merge.compare_merge(o, lse, x, case, 3.0)
    assert o_cmp.passed and lse_cmp.passed, (o_cmp.problem(), lse_cmp.problem())
    o[case.counts.index(0)] = 0.0  # the first case always has a row without states
    overwritten = merge.compare_merge(o, lse, x, case, 3.0)[0]
    assert overwritten.empty_row_errors == case.head_dim * case.num_heads and not overwritten.passed


def test_reference_of_a_batch_matches_per_request_attention():
    v = parse_id("prefill_sm90a_bf16_hd128_causal")
    case = verify_cases.random_cases(v, random.Random(SEED), 1, verify_cases.CPU_LIMITS)[0]
    x = verify_cases.make_inputs(v, case, "cpu")
    o, lse = verify_cases.reference_outputs(v, case, x, torch.float64)
    r = max(range(len(case.q_lens)), key=lambda i: case.q_lens[i])
    lo = int(x.qo_indptr[r])
    k, vv = x.request_kv(case, r)
    o_r, _ = reference.attention(x.q[lo : lo + case.q_lens[r]], k, vv, mask="causal", dtype=torch.float64)
    torch.testing.assert_close(o[lo : lo + case.q_lens[r]], o_r)
    assert o.shape[0] == lse.shape[0] == sum(case.q_lens)
