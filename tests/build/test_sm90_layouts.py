"""The wgmma prefill mainloop's layouts (kernel_traits_sm90.cuh, fragment.cuh), checked on the host with
real nvcc: the GMMA K-major SW128 atom must address every element where the sm80 gathers' Swizzle<3, 3, 3>
layout does (the cp.async loads and the epilogue reuse those), V^T must be V transposed, the S accumulator
read as P V's register operand must hold the (row, key) each thread's operand expects, and the rowcol view
must keep one query row per row (the softmax and mask read it). A wrong map gives wrong attention on a
GPU (tests/gpu/test_prefill.py); this finds it without one."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.nvcc


def test_sm90_layouts_match_the_sm80_gathers_and_the_wgmma_fragments(run_host_check):
    run = run_host_check("sm90_smem_layouts")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": 0 violation(s)") == 4, run.stdout
