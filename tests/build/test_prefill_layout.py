"""The prefill K/V row table's layout (load_gather_sm80.cuh), checked on the host with real nvcc: each copy
thread's rows must be adjacent in the table so that it reads them with 16-byte loads. A wrong layout gives
wrong attention on a GPU; CI has none, so this is where CI sees it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from flashinfer_build.wheelbuild.build import COMMON_FLAGS

pytestmark = pytest.mark.nvcc
SOURCE = Path(__file__).resolve().parent / "fixtures" / "host" / "prefill_row_table.cu"
CSRC = Path(__file__).resolve().parents[2] / "kernels" / "csrc"


def test_each_copy_threads_key_rows_are_adjacent_in_the_row_table(toolchain, tmp_path):
    exe = tmp_path / "prefill_row_table"
    compile_cmd = [
        str(toolchain.nvcc),
        *COMMON_FLAGS,
        "-cudart",
        "static",
        *(f"-L{d}" for d in toolchain.link_dirs),
        "-I",
        str(CSRC),
        "-I",
        str(toolchain.cutlass_include),
        str(SOURCE),
        "-o",
        str(exe),
    ]
    subprocess.run(compile_cmd, check=True, capture_output=True, text=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": 0 violation(s)") == 8, run.stdout
