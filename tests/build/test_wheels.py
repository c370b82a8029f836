"""Wheels from real nvcc builds: byte-identical from independent builds, and found once installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv

import pytest
from flashinfer_build.wheelbuild.build import build
from flashinfer_build.wheelbuild.fatbin import check_target_code
from flashinfer_build.wheelbuild.targets import TARGETS
from flashinfer_build.wheelbuild.wheel import build_wheel

pytestmark = pytest.mark.nvcc


def _wheels(options, toolchain, dist):
    result = build(options, toolchain)
    return {arch: build_wheel(pack, dist, env={}) for arch, pack in result.packs.items()}


def test_independent_builds_give_byte_identical_wheels(fixture_options, toolchain, tmp_path):
    first = _wheels(fixture_options("one"), toolchain, tmp_path / "dist-one")
    second = _wheels(
        fixture_options("two", jobs=1), toolchain, tmp_path / "dist-two"
    )  # fresh cache and build dir
    assert set(first) == {"sm90a", "sm80"}
    for arch in first:
        assert first[arch].name == second[arch].name
        assert first[arch].read_bytes() == second[arch].read_bytes(), arch


def test_an_installed_wheel_is_listed(fixture_options, toolchain, tmp_path):
    wheel = _wheels(fixture_options(archs=("sm90a",)), toolchain, tmp_path / "dist")["sm90a"]
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    run = subprocess.run(
        [str(python), "-m", "flashinfer_build.cli.main", "list", "--installed", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONNOUSERSITE": "1"},
    )
    assert run.returncode == 0, run.stderr
    (pack,) = [p for p in json.loads(run.stdout)["packs"] if p["path"].startswith(str(env_dir))]
    assert pack["arch"] == "sm90a" and pack["variants"] == ["merge_sm90a_bf16"]
    library = next(
        env_dir.glob("lib/python*/site-packages/flashinfer_build_kernels_sm90a/libfib_kernels_sm90a.so")
    )
    check_target_code(library, TARGETS["sm90a"])
    table = subprocess.run(
        [str(python), "-m", "flashinfer_build.cli.main", "list", "--installed"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert "merge_sm90a_bf16" in table.stdout and "sm90a" in table.stdout
