"""Toolchain discovery: what it finds where, and a clear error naming the fix when something is missing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from flashinfer_build.wheelbuild import toolchain
from flashinfer_build.wheelbuild.errors import ToolchainError


def _fake_nvcc(root: Path, version: str = "13.0.88") -> Path:
    nvcc = root / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {version[:4]}, V{version}'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    return nvcc


def test_nothing_found_names_the_pip_command(tmp_path):
    env = {"FLASHINFER_BUILD_TOOLCHAIN": "system", "PATH": str(tmp_path)}
    with pytest.raises(ToolchainError) as e:
        toolchain.find_nvcc(env)
    message = str(e.value)
    assert "nvcc not found" in message and "$CUDA_HOME (unset)" in message and "nvcc on $PATH" in message
    assert 'pip install "flashinfer-build[build]"' in message and "nvidia-cuda-nvcc==13.0.*" in message


def test_cuda_home_without_nvcc_is_reported(tmp_path):
    env = {"FLASHINFER_BUILD_TOOLCHAIN": "system", "CUDA_HOME": str(tmp_path / "cuda"), "PATH": ""}
    with pytest.raises(ToolchainError, match=r"\$CUDA_HOME/bin/nvcc .*not found"):
        toolchain.find_nvcc(env)


def test_cuda_home_then_path(tmp_path):
    nvcc = _fake_nvcc(tmp_path / "cuda", "13.0.42")
    found, origin, link_dirs = toolchain.find_nvcc(
        {"FLASHINFER_BUILD_TOOLCHAIN": "system", "CUDA_HOME": str(tmp_path / "cuda")}
    )
    assert (found, origin, link_dirs) == (nvcc, "$CUDA_HOME", ())
    assert toolchain.nvcc_version(found) == "13.0.42"
    found, origin, _ = toolchain.find_nvcc({"FLASHINFER_BUILD_TOOLCHAIN": "system", "PATH": str(nvcc.parent)})
    assert (found, origin) == (nvcc, "PATH")


def test_bad_mode_is_an_error():
    with pytest.raises(ToolchainError, match="auto, pypi or system"):
        toolchain.find_nvcc({"FLASHINFER_BUILD_TOOLCHAIN": "conda"})


def test_pypi_toolchain_is_preferred_when_installed():
    root = toolchain.pypi_cuda_root()
    if root is None:
        pytest.skip("the nvidia-cuda-nvcc package is not installed")
    nvcc, origin, link_dirs = toolchain.find_nvcc({"PATH": ""})
    assert nvcc == root / "bin" / "nvcc" and origin == "PyPI packages"
    assert (link_dirs[0] / "libcudart_static.a").is_file()  # what 13.0's nvcc does not find by itself


def test_missing_cutlass_names_the_pip_command(tmp_path):
    with pytest.raises(ToolchainError, match=r'pip install "nvidia-cutlass==4.2.\*"'):
        toolchain.find_cutlass({"FLASHINFER_BUILD_CUTLASS_DIR": str(tmp_path)})


def test_cutlass_version_is_read_from_its_header(tmp_path):
    include = tmp_path / "include"
    for header in ("cutlass/cutlass.h", "cute/tensor.hpp"):
        (include / header).parent.mkdir(parents=True, exist_ok=True)
        (include / header).write_text("")
    (include / "cutlass" / "version.h").write_text(
        "#define CUTLASS_MAJOR 4\n#define CUTLASS_MINOR 2\n#define CUTLASS_PATCH 1\n"
    )
    assert toolchain.find_cutlass({"FLASHINFER_BUILD_CUTLASS_DIR": str(include)}) == include
    assert toolchain.cutlass_version(include) == "4.2.1"


def test_no_host_compiler_is_reported(tmp_path):
    with pytest.raises(ToolchainError, match="no host C.. compiler"):
        toolchain.find_host_compiler({"PATH": str(tmp_path)})


def test_discover_on_this_machine_or_a_clear_error():
    try:
        tc = toolchain.discover(os.environ)
    except ToolchainError as e:
        assert "pip install" in str(e) or "apt-get" in str(e)
        return
    assert tc.nvcc.is_file() and tc.nvcc_version.startswith("13.0.")
    assert (tc.cutlass_include / "cute" / "tensor.hpp").is_file()
