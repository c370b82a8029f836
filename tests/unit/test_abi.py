"""kernels/abi.py against kernels/csrc/api.h: every struct's size and every field's offset, as the host C
compiler lays them out."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest
from flashinfer_build.kernels import abi
from flashinfer_build.wheelbuild.options import BuildOptions

API_H = BuildOptions().csrc_dir / "api.h"
PLAN_API_H = BuildOptions().csrc_dir / "plan" / "plan_api.h"
STRUCTS = {
    "fib_work_item": abi.WorkItem,
    "fib_attention_params": abi.AttentionParams,
    "fib_merge_params": abi.MergeParams,
    "fib_kernel_info": abi.KernelInfo,
    "fib_plan_config": abi.PlanConfig,
    "fib_plan_result": abi.PlanResult,
}
PLAN_CONSTANTS = {
    name: getattr(abi, name[4:])
    for name in (
        "FIB_PLAN_MAX_FACTORS",
        "FIB_PLAN_OK",
        "FIB_PLAN_INDPTR_START",
        "FIB_PLAN_INDPTR_DECREASES",
        "FIB_PLAN_INDPTR_EXCEEDS",
        "FIB_PLAN_LAST_PAGE_LEN",
        "FIB_PLAN_BATCH_OVER",
        "FIB_PLAN_TOKENS_OVER",
        "FIB_PLAN_ITEMS_OVER",
        "FIB_PLAN_SLOT_OVER",
        "FIB_PLAN_BAD_CONFIG",
        "FIB_PLAN_CUDA",
        "FIB_PLAN_QO_INDPTR",
    )
}


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory) -> dict[str, int]:
    """ "name" -> sizeof and "name.field" -> offsetof, printed by a C program compiled against api.h."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no host C compiler (cc)")
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        f'#include "{API_H}"',
        f'#include "{PLAN_API_H}"',
        "int main(void) {",
        '  printf("abi_version %d\\n", FIB_ABI_VERSION);',
        *(f'  printf("{name} %d\\n", (int){name});' for name in PLAN_CONSTANTS),
        '  printf("INDEX_READY %d\\n", FIB_INDEX_READY);',
        '  printf("PAGES_READY %d\\n", FIB_PAGES_READY);',
    ]
    for c_name, struct in STRUCTS.items():
        lines.append(f'  printf("{c_name} %zu\\n", sizeof({c_name}));')
        for field, _ in struct._fields_:
            lines.append(f'  printf("{c_name}.{field} %zu\\n", offsetof({c_name}, {field}));')
    lines += ["  return 0;", "}"]
    work = tmp_path_factory.mktemp("abi")
    (work / "layout.c").write_text("\n".join(lines) + "\n")
    subprocess.run(
        [cc, "-std=c99", "-Wall", "-Werror", "-o", str(work / "layout"), str(work / "layout.c")],
        check=True,
        capture_output=True,
        text=True,
    )
    out = subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_abi_version_matches(c_layout):
    assert c_layout["abi_version"] == abi.ABI_VERSION


def test_launch_flags_match(c_layout):
    assert (c_layout["INDEX_READY"], c_layout["PAGES_READY"]) == (abi.INDEX_READY, abi.PAGES_READY)


@pytest.mark.parametrize("c_name", STRUCTS)
def test_struct_layout_matches(c_layout, c_name):
    struct = STRUCTS[c_name]
    assert ctypes.sizeof(struct) == c_layout[c_name]
    for field, _ in struct._fields_:
        assert getattr(struct, field).offset == c_layout[f"{c_name}.{field}"], field


def test_work_item_columns_match_the_struct():
    assert abi.WORK_ITEM_FIELDS * 4 == ctypes.sizeof(abi.WorkItem)


def test_planner_constants_match(c_layout):
    for name, value in PLAN_CONSTANTS.items():
        assert c_layout[name] == value, name
