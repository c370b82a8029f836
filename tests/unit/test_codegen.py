"""Instantiation sources: rendering, the real templates, write-if-different, include scanning."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from flashinfer_build.variants import AXES, Variant, load_matrix
from flashinfer_build.wheelbuild.codegen import render, template_path, write_if_different
from flashinfer_build.wheelbuild.errors import ConfigError
from flashinfer_build.wheelbuild.options import BuildOptions
from flashinfer_build.wheelbuild.sources import local_includes

ALL_PLACEHOLDERS = "GENERATED_NOTE VARIANT_ID SYMBOL Q_TYPE KV_TYPE HEAD_DIM MASK POS SOFT_CAP SM".split()
REAL_CSRC = BuildOptions().csrc_dir


def _template(tmp_path: Path, family: str, text: str) -> Path:
    path = template_path(tmp_path, family)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return tmp_path


def test_every_placeholder_is_substituted(tmp_path):
    csrc = _template(tmp_path, "decode", "\n".join(f"{p}=${{{p}}}" for p in ALL_PLACEHOLDERS))
    v = Variant(
        family="decode",
        arch="sm90a",
        q_dtype="fp16",
        kv_dtype="fp8e5m2",
        head_dim=64,
        mask="sliding_window",
        pos="alibi",
        soft_cap=True,
    )
    values = dict(line.split("=", 1) for line in render(v, csrc).splitlines())
    assert values["GENERATED_NOTE"].startswith("// Generated from kernels/csrc/instantiate/decode.cu.in")
    assert "do not edit" in values["GENERATED_NOTE"] and v.id in values["GENERATED_NOTE"]
    assert values["VARIANT_ID"] == v.id
    assert values["SYMBOL"] == f"fib_{v.id}"
    assert values["Q_TYPE"] == "cutlass::half_t"
    assert values["KV_TYPE"] == "cutlass::float_e5m2_t"
    assert values["HEAD_DIM"] == "64"
    assert values["MASK"] == "fib::MaskMode::kSlidingWindow"
    assert values["POS"] == "fib::PosEncoding::kAlibi"
    assert values["SOFT_CAP"] == "true"
    assert values["SM"] == "90"
    assert render(Variant(family="decode", arch="sm80"), csrc).splitlines()[-1] == "SM=80"


def test_unknown_placeholder_is_named(tmp_path):
    csrc = _template(tmp_path, "merge", "${VARIANT_ID} ${HEADDIM}")
    with pytest.raises(ConfigError, match=r"unknown placeholder \$\{HEADDIM\}"):
        render(Variant(family="merge", arch="sm80"), csrc)


@pytest.mark.parametrize("family", AXES["family"])
def test_real_templates_render_for_every_variant_of_the_full_matrix(family):
    if not template_path(REAL_CSRC, family).is_file():
        pytest.skip(f"kernels/csrc/instantiate/{family}.cu.in does not exist yet")
    variants = [v for v in load_matrix("full") if v.family == family]
    for v in variants:
        text = render(v, REAL_CSRC)
        assert text.startswith("// Generated from"), v.id
        assert "${" not in text, v.id
        assert f"fib_{v.id}_run" in text and f"fib_{v.id}_info" in text, v.id
    assert len({render(v, REAL_CSRC) for v in variants}) == len(variants)


def test_write_if_different_leaves_unchanged_files_alone(tmp_path):
    path = tmp_path / "gen" / "unit.cu"
    assert write_if_different(path, "one")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert not write_if_different(path, "one")
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert write_if_different(path, "two")
    assert path.read_text() == "two" and path.stat().st_mtime_ns != 1_000_000_000
    assert [p.name for p in path.parent.iterdir()] == ["unit.cu"]  # no temp files left


def test_local_includes_follow_nested_quotes_and_skip_system_headers(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.cuh").write_text('#include "y.cuh"\n#include <cuda_runtime.h>\n')
    (tmp_path / "a" / "y.cuh").write_text('#include "../z.h"\n#include "a/x.cuh"\n')  # a cycle back to x
    (tmp_path / "z.h").write_text("// leaf\n")
    (tmp_path / "unused.h").write_text("")
    found = local_includes('#include "a/x.cuh"\n#include <cute/tensor.hpp>\n', tmp_path / "gen", (tmp_path,))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/x.cuh", "a/y.cuh", "z.h"]


def test_real_templates_include_only_existing_kernel_headers():
    for template in sorted((REAL_CSRC / "instantiate").glob("*.cu.in")):
        text = template.read_text()
        names = re.findall(r'#include\s*"([^"]+)"', text)
        found = {
            p.relative_to(REAL_CSRC.resolve()).as_posix()
            for p in local_includes(text, REAL_CSRC, (REAL_CSRC,))
        }
        assert set(names) <= found, (
            f"{template.name} includes a header that does not exist: {set(names) - found}"
        )


def test_sm90_prefill_mainloop_is_the_default_and_changes_only_sm90a_prefill_sources():
    """Every sm90a prefill variant but head dim 64 without a mask (slower there, codegen.py says why)."""
    variants = load_matrix("full")
    for v in variants:
        default = render(v, REAL_CSRC)
        wgmma = render(v, REAL_CSRC, sm90_prefill_mainloop=True)
        sm80_mainloop = render(v, REAL_CSRC, sm90_prefill_mainloop=False)
        assert default == wgmma, v.id
        if v.family == "prefill" and v.arch == "sm90a" and not (v.head_dim == 64 and v.mask == "none"):
            assert "instantiate/prefill_sm90.cu.in" in wgmma, v.id
            assert "PrefillKernelSm90" in wgmma, v.id
            assert f"fib_{v.id}_run" in wgmma and "${" not in wgmma, v.id
            assert "PrefillKernelSm80" in sm80_mainloop and "PrefillKernelSm90" not in sm80_mainloop, v.id
        else:
            assert sm80_mainloop == wgmma, v.id
