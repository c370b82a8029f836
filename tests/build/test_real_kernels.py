"""The real kernel templates, compiled: CI's small nvcc subset (the merge units and one decode unit).

Uses the default object cache (FLASHINFER_BUILD_CACHE_DIR or ~/.cache/flashinfer-build): its key covers the
sources, flags and toolchain, so a cached object is what this build would compile.
"""

from __future__ import annotations

import ctypes
import os

import pytest
from flashinfer_build.kernels.loader import KernelPack
from flashinfer_build.variants import load_matrix, select
from flashinfer_build.wheelbuild.build import build
from flashinfer_build.wheelbuild.codegen import template_path
from flashinfer_build.wheelbuild.fatbin import check_target_code
from flashinfer_build.wheelbuild.options import resolve
from flashinfer_build.wheelbuild.targets import TARGETS
from flashinfer_build.wheelbuild.wheel import build_wheel

pytestmark = pytest.mark.nvcc
CI_SUBSET = ("merge_*", "decode_sm90a_bf16_hd128")


@pytest.fixture(scope="module")
def packs(toolchain, tmp_path_factory):
    options = resolve(
        {"matrix": "ci", "only": ",".join(CI_SUBSET), "build_dir": tmp_path_factory.mktemp("real")},
        os.environ,
        None,
    )
    selected = select(load_matrix("ci"), only=CI_SUBSET)
    expected = {v.id for v in selected if template_path(options.csrc_dir, v.family).is_file()}
    if not expected:
        pytest.skip("no kernel template exists yet")
    result = build(options, toolchain)
    return expected, result


def test_the_ci_subset_compiles_into_packs(packs):
    expected, result = packs
    built = {i for pack in result.packs.values() for i in KernelPack(pack).variants}
    assert built == expected


@pytest.mark.parametrize("arch", ["sm90a", "sm80"])
def test_each_pack_holds_its_arch_only_and_exports_every_entry_point(packs, arch, tmp_path):
    _, result = packs
    if arch not in result.packs:
        pytest.skip(f"no {arch} variant in the subset has a template yet")
    pack = KernelPack(result.packs[arch])
    check_target_code(pack.path / pack.manifest["library"], TARGETS[arch])
    for variant_id in pack.variants:
        compiled = pack.get(variant_id)  # resolves both symbols in the loaded library
        assert isinstance(compiled._run, ctypes._CFuncPtr) and isinstance(compiled._info, ctypes._CFuncPtr)
    wheel = build_wheel(pack.path, tmp_path, env={})
    assert wheel.name.startswith(f"flashinfer_build_kernels_{arch}-")
