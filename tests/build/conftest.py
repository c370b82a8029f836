"""Fixtures for the real-nvcc build tests: the machine's toolchain and a private copy of the fixture tree."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from flashinfer_build.wheelbuild import toolchain as toolchain_mod
from flashinfer_build.wheelbuild.build import COMMON_FLAGS
from flashinfer_build.wheelbuild.errors import ToolchainError
from flashinfer_build.wheelbuild.options import BuildOptions

FIXTURE_CSRC = Path(__file__).resolve().parent / "fixtures" / "csrc"
HOST_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "host"
CSRC = Path(__file__).resolve().parents[2] / "kernels" / "csrc"


@pytest.fixture(scope="session")
def toolchain():
    try:
        return toolchain_mod.discover(os.environ)
    except ToolchainError as e:
        pytest.skip(f"no CUDA toolchain: {e}")


@pytest.fixture
def csrc(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE_CSRC, tmp_path / "csrc"))


@pytest.fixture
def fixture_options(tmp_path, csrc):
    """Options that build the fixture's merge units for both archs in the test's own directories."""

    def make(name: str = "one", **changes) -> BuildOptions:
        values = dict(
            matrix="ci",
            only=("merge_*",),
            archs=("sm90a", "sm80"),
            jobs=2,
            csrc_dir=csrc,
            build_dir=tmp_path / name / "build",
            cache_dir=tmp_path / name / "cache",
        )
        values.update(changes)
        return BuildOptions(**values)

    return make


@pytest.fixture
def run_host_check(toolchain, tmp_path):
    """Compiles fixtures/host/NAME.cu with nvcc against kernels/csrc and CUTLASS, runs it on the host,
    and returns its completed process (a check program prints its findings and exits 0 when it ran)."""

    def run(name: str) -> subprocess.CompletedProcess:
        exe = tmp_path / name
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
            str(HOST_FIXTURES / f"{name}.cu"),
            "-o",
            str(exe),
        ]
        built = subprocess.run(compile_cmd, capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        return subprocess.run([str(exe)], capture_output=True, text=True)

    return run
