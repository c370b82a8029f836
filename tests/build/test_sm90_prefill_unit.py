"""The wgmma prefill mainloop (build option sm90_prefill_mainloop, docs/HOPPER_MAINLOOP.md) compiled for
sm_90a: its PTX must issue wgmma for both GEMMs with the proxy fence before them, ptxas must not serialise
the wgmma (it says so in a warning, C7510), and the machine code must keep the softmax between the two
wgmma waits of a step (this fails with keep_before_next_wait removed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from flashinfer_build.variants import load_matrix, select
from flashinfer_build.wheelbuild.build import COMMON_FLAGS
from flashinfer_build.wheelbuild.codegen import render
from flashinfer_build.wheelbuild.options import BuildOptions
from flashinfer_build.wheelbuild.targets import TARGETS

pytestmark = pytest.mark.nvcc
VARIANT = "prefill_sm90a_bf16_hd128_causal"


@pytest.fixture(scope="module")
def compiled(toolchain, tmp_path_factory):
    """The unit compiled with -keep: (its build directory, nvcc's stderr)."""
    (variant,) = select(load_matrix("full"), only=(VARIANT,))
    csrc = BuildOptions().csrc_dir
    tmp_path = tmp_path_factory.mktemp("sm90_prefill_unit")
    source = tmp_path / f"{VARIANT}.cu"
    source.write_text(render(variant, csrc, sm90_prefill_mainloop=True))
    cmd = [
        str(toolchain.nvcc),
        *COMMON_FLAGS,
        *TARGETS["sm90a"].gencode,
        "-Xptxas",
        "-v",
        "-keep",
        "-keep-dir",
        str(tmp_path),
        "-I",
        str(csrc),
        "-I",
        str(toolchain.cutlass_include),
        "-c",
        str(source),
        "-o",
        str(tmp_path / f"{VARIANT}.o"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path, done.stderr


def test_the_sm90_prefill_unit_issues_wgmma_without_serialisation(compiled):
    tmp_path, stderr = compiled
    assert "warning" not in stderr.lower(), stderr
    (ptx,) = tmp_path.glob("*.ptx")
    text = ptx.read_text()
    # S = Q K^T from shared memory and O += P V with P in registers, 8 k-blocks each at head dim 128 and
    # 128 keys: S in each of the mainloop's three step copies (first, masked, unmasked tiles), P V of the
    # previous tile in the last two and once after the loop.
    assert text.count("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16") == 48
    assert "fence.proxy.async.shared::cta" in text


def test_the_softmax_runs_between_the_two_wgmma_waits(compiled, toolchain):
    """keep_before_next_wait (mainloop_fwd_sm90.cuh): in the machine code each overlapped step must wait for
    S (wait_group 1), run the softmax's 64 exp2 of its S tile, and only then wait for P V (wait_group 0).
    ptxas 13.0 without it moves the second wait above the exp2s. Needs cuobjdump (CUDA toolkit)."""
    tmp_path, _ = compiled
    cuobjdump = toolchain.nvcc.parent / "cuobjdump"
    if not cuobjdump.is_file():
        found = shutil.which("cuobjdump")
        if found is None:
            pytest.skip("cuobjdump not found (not in the PyPI toolchain)")
        cuobjdump = Path(found)
    (cubin,) = tmp_path.glob("*.cubin")
    sass = subprocess.run(
        [str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    between, inside = [], None
    for line in sass.splitlines():
        if "WARPGROUP.DEPBAR.LE gsb0, 0x1" in line:
            inside = 0
        elif "WARPGROUP.DEPBAR.LE gsb0, 0x0" in line and inside is not None:
            between.append(inside)
            inside = None
        elif inside is not None and "MUFU.EX2" in line:
            inside += 1
    # The masked and the unmasked step copy: 64 exp2 of S (64 x 128 over 128 threads) each, and the two
    # rows' rescale factors.
    assert len(between) == 2 and all(n >= 64 for n in between), between
