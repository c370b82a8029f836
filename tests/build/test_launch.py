"""kernels/csrc/common/launch.cuh compiled for each target: programmatic dependent launch (sm_90
griddepcontrol, and the launch attribute on the host side) only where the pack's code is sm_90 machine
code; the sm80 pack's code and its PTX, which older GPUs compile at load time, stay without it."""

from __future__ import annotations

import subprocess

import pytest
from flashinfer_build.wheelbuild.options import BuildOptions
from flashinfer_build.wheelbuild.targets import TARGETS

pytestmark = pytest.mark.nvcc

SOURCE = r"""
#include <cstdio>
#include "common/launch.cuh"

__global__ void kernel(int* x) {
  fib::wait_for_previous_grid();
  fib::launch_dependents();
  *x = 1;
}

int main() {
  std::printf("%d\n", int(fib::kProgrammaticLaunch));
  return 0;
}
"""
VIRTUAL_ARCH = {"sm90a": "compute_90a", "sm80": "compute_80"}


def _nvcc(toolchain, *args) -> None:
    include = f"-I{BuildOptions().csrc_dir}"
    cmd = [str(toolchain.nvcc), "-std=c++17", include, *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("arch", ["sm90a", "sm80"])
def test_programmatic_launch_only_in_sm90_code(toolchain, tmp_path, arch):
    source = tmp_path / "launch.cu"
    source.write_text(SOURCE)
    ptx = tmp_path / "launch.ptx"
    _nvcc(toolchain, "-ptx", f"-arch={VIRTUAL_ARCH[arch]}", str(source), "-o", str(ptx))
    assert ("griddepcontrol.wait" in ptx.read_text()) == (arch == "sm90a")

    exe = tmp_path / "launch"
    links = [f"-L{d}" for d in toolchain.link_dirs]
    _nvcc(toolchain, *TARGETS[arch].gencode, "-cudart", "static", *links, str(source), "-o", str(exe))
    shown = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.strip()
    assert shown == ("1" if arch == "sm90a" else "0"), "host side: launch with the attribute"
