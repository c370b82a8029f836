"""Fixtures shared by the CPU tests."""

from __future__ import annotations

import shutil

import pytest
from flashinfer_build.kernels import native_plan
from flashinfer_build.wheelbuild import planner
from flashinfer_build.wheelbuild.options import BuildOptions


@pytest.fixture(scope="session")
def host_planner(tmp_path_factory):
    """The C decode planner (kernels/csrc/plan), built with the host C++ compiler as packs link it."""
    compiler = shutil.which("c++")
    if compiler is None:
        pytest.skip("no host C++ compiler")
    out = tmp_path_factory.mktemp("planner") / "libfib_plan.so"
    planner.build_host_library(BuildOptions().csrc_dir, out, compiler)
    return native_plan.host_library(str(out))
