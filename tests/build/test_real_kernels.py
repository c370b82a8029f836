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


def test_each_pack_links_the_host_planner_and_it_plans_as_python_does(packs):
    """The C decode planner inside a real pack (the same source the CPU tests build with c++) writes the
    Python planner's staging bytes for a skewed (split) and a uniform (unsplit) batch."""
    import numpy as np
    from flashinfer_build.kernels import abi, native_plan, scheduler

    _, result = packs
    kernel = scheduler.KernelShape(num_sms=132, ctas_per_sm=2, cta_tile_q=64, cta_tile_kv=64)
    for pack_dir in result.packs.values():
        pack = KernelPack(pack_dir)
        planner = native_plan.planner_of(pack)
        assert set(pack.manifest["planner"]) == {"decode", "decode_upload", "prefill", "prefill_upload"}
        fn, upload = planner.plan, planner.upload
        for kv in ([32768] + [512] * 255, [8192] * 64):
            pages = [-(-n // 16) for n in kv]
            indptr = np.concatenate([[0], np.cumsum(pages)]).astype(np.int32)
            last = np.array([n - (p - 1) * 16 for n, p in zip(kv, pages, strict=True)], np.int32)
            cap = scheduler.capacity(
                max_batch=len(kv), max_tokens=len(kv), group=4, cta_tile_q=64, num_sms=132, decode=True
            )
            lay = scheduler.layout(cap, 32, 128)
            p = scheduler.plan(
                None, kv, num_qo_heads=32, num_kv_heads=8, page_size=16, kernel=kernel, capacity=cap
            )
            want = np.zeros(lay.metadata_bytes // 4, np.int32)
            scheduler.pack_metadata(p, lay, want, {"kv_indptr": indptr, "kv_last_page_len": last})
            cfg = native_plan.config(
                lay,
                kernel,
                num_qo_heads=32,
                num_kv_heads=8,
                page_size=16,
                window_left=-1,
                split_kv=True,
                fixed_grid=False,
                kv_bytes=2,
                cost=scheduler.DEFAULT_COST,
            )
            got, r = np.zeros_like(want), abi.PlanResult()
            args = (indptr.ctypes.data, last.ctypes.data, None, len(kv), int(indptr[-1]), got.ctypes.data)
            assert fn(ctypes.byref(cfg), *args, ctypes.byref(r)) == 0
            assert r.chunk_size == p.chunk_size and (r.chunk_size > 0) == (len(kv) == 256)
            np.testing.assert_array_equal(got, want)
            # the upload entry waits on the event first: without a GPU (or with a null event) that fails,
            # and the failure comes back as a CUDA error, nothing planned
            r = abi.PlanResult()
            err = upload(ctypes.byref(cfg), *args, ctypes.byref(r), None, None, None)
            assert err == r.error == abi.PLAN_CUDA and r.values[0] != 0 and r.grid == 0
