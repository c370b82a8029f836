"""The prefill K/V row table's layout (load_gather_sm80.cuh), checked on the host with real nvcc: each copy
thread's rows must be adjacent in the table so that it reads them with 16-byte loads. A wrong layout gives
wrong attention on a GPU; CI has none, so this is where CI sees it."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.nvcc


def test_each_copy_threads_key_rows_are_adjacent_in_the_row_table(run_host_check):
    run = run_host_check("prefill_row_table")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": 0 violation(s)") == 8, run.stdout
