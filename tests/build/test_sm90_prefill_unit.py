"""The wgmma prefill mainloop (build option sm90_prefill_mainloop, docs/HOPPER_MAINLOOP.md) compiled for
sm_90a: its PTX must issue wgmma for both GEMMs with the proxy fence before them, and ptxas must not
serialise the wgmma (it says so in a warning, C7510)."""

from __future__ import annotations

import subprocess

import pytest
from flashinfer_build.variants import load_matrix, select
from flashinfer_build.wheelbuild.build import COMMON_FLAGS
from flashinfer_build.wheelbuild.codegen import render
from flashinfer_build.wheelbuild.options import BuildOptions
from flashinfer_build.wheelbuild.targets import TARGETS

pytestmark = pytest.mark.nvcc
VARIANT = "prefill_sm90a_bf16_hd128_causal"


def test_the_sm90_prefill_unit_issues_wgmma_without_serialisation(toolchain, tmp_path):
    (variant,) = select(load_matrix("full"), only=(VARIANT,))
    csrc = BuildOptions().csrc_dir
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
    assert "warning" not in done.stderr.lower(), done.stderr
    (ptx,) = tmp_path.glob("*.ptx")
    text = ptx.read_text()
    # S = Q K^T from shared memory and O += P V with P in registers, 8 k-blocks each at head dim 128 and
    # 128 keys: S in each of the mainloop's three step copies (first, masked, unmasked tiles), P V of the
    # previous tile in the last two and once after the loop.
    assert text.count("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16") == 48
    assert "fence.proxy.async.shared::cta" in text
