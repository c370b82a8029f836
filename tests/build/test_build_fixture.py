"""`build` with real nvcc on a trivial fixture kernel: packs, no-op rebuilds, cache invalidation, failures,
interruption."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from flashinfer_build.kernels import abi
from flashinfer_build.wheelbuild.build import build
from flashinfer_build.wheelbuild.errors import CompileError
from flashinfer_build.wheelbuild.fatbin import check_target_code, images
from flashinfer_build.wheelbuild.targets import TARGETS

pytestmark = pytest.mark.nvcc
IDS = {"merge_sm90a_bf16", "merge_sm80_bf16"}


def _cli(options, *extra, env=None):
    """`flashinfer-build build` for these options, in a subprocess, as a user runs it."""
    cmd = [
        sys.executable,
        "-m",
        "flashinfer_build.cli.main",
        "build",
        "--preset",
        options.matrix,
        *[a for p in options.only for a in ("--only", p)],
        "--arch",
        ",".join(options.archs),
        "--build-dir",
        str(options.build_dir),
        "--cache-dir",
        str(options.cache_dir),
        "-j",
        str(options.jobs),
        *extra,
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "FLASHINFER_BUILD_CSRC_DIR": str(options.csrc_dir), **(env or {})},
    )


def test_build_writes_one_pack_per_arch_and_a_rebuild_is_a_no_op(fixture_options, toolchain):
    options = fixture_options()
    result = build(options, toolchain)
    assert set(result.compiled) >= IDS and not result.failed
    for arch, pack in result.packs.items():
        manifest = json.loads((pack / "manifest.json").read_text())
        assert manifest["arch"] == arch and manifest["abi_version"] == abi.ABI_VERSION
        assert manifest["library"] == f"libfib_kernels_{arch}.so" and (pack / manifest["library"]).is_file()
        assert manifest["toolchain"]["nvcc"] == toolchain.nvcc_version
        (entry,) = manifest["variants"]
        assert entry["id"] == f"merge_{arch}_bf16"
        assert entry["symbols"] == {
            "run": f"fib_merge_{arch}_bf16_run",
            "info": f"fib_merge_{arch}_bf16_info",
        }
        check_target_code(pack / manifest["library"], TARGETS[arch])
    # build.ninja lists only the units the cache lacks, so it changes; sources, libraries, manifests do not.
    outputs = [p for p in options.build_dir.rglob("*") if p.is_file() and p.suffix in (".cu", ".so", ".json")]
    assert len(outputs) == 6
    stamps = {p: p.stat().st_mtime_ns for p in outputs}

    start = time.monotonic()
    again = _cli(options)
    elapsed = time.monotonic() - start
    assert again.returncode == 0, again.stderr
    assert "0 to compile, 2 cached" in again.stderr and "✓" not in again.stderr
    assert elapsed < 2.0, f"a no-op build took {elapsed:.2f} s"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten, relinked or regenerated


def test_a_changed_header_recompiles_and_going_back_hits_the_cache(fixture_options, toolchain, csrc):
    options = fixture_options()
    first = build(options, toolchain)
    library = first.packs["sm90a"] / "libfib_kernels_sm90a.so"
    original = library.read_bytes()
    header = csrc / "fixture.cuh"
    text = header.read_text()
    header.write_text(text.replace("if (i < n)", "if (i < n && n > 0)"))
    changed = build(options, toolchain)
    assert IDS <= set(changed.compiled)
    assert library.read_bytes() != original
    header.write_text(text)
    back = build(options, toolchain)
    assert not IDS & set(back.compiled)  # both objects came from the cache
    assert library.read_bytes() == original


def test_a_different_flag_misses_the_cache(fixture_options, toolchain):
    build(fixture_options(), toolchain)
    lined = build(fixture_options(lineinfo=True), toolchain)
    assert IDS <= set(lined.compiled)


def test_a_broken_source_names_the_variant_and_fails(fixture_options, toolchain, csrc):
    (csrc / "instantiate" / "decode.cu.in").write_text(
        '${GENERATED_NOTE}\nextern "C" int ${SYMBOL}_run(const void*, void*) { return undeclared_thing; }\n'
    )
    options = fixture_options(only=("merge_sm90a*", "decode_sm90a_bf16_hd128"), archs=("sm90a",))
    with pytest.raises(CompileError) as e:
        build(options, toolchain)
    assert set(e.value.failures) == {"decode_sm90a_bf16_hd128"}
    assert "undeclared_thing" in e.value.failures["decode_sm90a_bf16_hd128"]

    run = _cli(options)
    assert run.returncode == 4
    assert "decode_sm90a_bf16_hd128" in run.stderr and "undeclared_thing" in run.stderr
    assert not (options.build_dir / "sm90a" / "manifest.json").exists()  # no --keep-going: no pack

    kept = _cli(options, "--keep-going")
    assert kept.returncode == 4, kept.stderr
    manifest = json.loads((options.build_dir / "sm90a" / "manifest.json").read_text())
    assert [v["id"] for v in manifest["variants"]] == ["merge_sm90a_bf16"]


def test_an_interrupted_build_leaves_no_cache_entry_and_resumes(fixture_options, toolchain):
    options = fixture_options(jobs=1)
    cmd = [
        sys.executable,
        "-m",
        "flashinfer_build.cli.main",
        "build",
        "--preset",
        "ci",
        "--only",
        "merge_*",
        "--build-dir",
        str(options.build_dir),
        "--cache-dir",
        str(options.cache_dir),
        "-j",
        "1",
    ]
    proc = subprocess.Popen(
        cmd,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "FLASHINFER_BUILD_CSRC_DIR": str(options.csrc_dir)},
    )
    objects = options.cache_dir / "objects"
    deadline = time.monotonic() + 60
    while not list(objects.glob("*/.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(objects.glob("*/.tmp-*")), "no compile started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(objects.glob("*/*.o"))) < 2  # at most the unit that had already finished
    for entry in objects.glob("*/*.o"):
        assert images(entry)  # any entry there is a whole object
    resumed = build(options, toolchain)
    assert set(resumed.packs) == {"sm90a", "sm80"} and not resumed.failed
    assert len(list(objects.glob("*/*.o"))) == 2


def test_machine_code_per_arch_agrees_with_cuobjdump(fixture_options, toolchain):
    result = build(fixture_options(), toolchain)
    for arch, pack in result.packs.items():
        library = pack / TARGETS[arch].library
        found = check_target_code(library, TARGETS[arch])
        cuobjdump = toolchain.nvcc.parent / "cuobjdump"
        if not cuobjdump.is_file():
            continue
        elf = subprocess.run(
            [str(cuobjdump), "--list-elf", str(library)], capture_output=True, text=True
        ).stdout
        ptx = subprocess.run(
            [str(cuobjdump), "--list-ptx", str(library)], capture_output=True, text=True
        ).stdout
        assert sorted(set(_sm_names(elf, "sm_"))) == sorted({f"sm_{i.sm}" for i in found if i.kind == "elf"})
        assert sorted(set(_sm_names(ptx, "sm_"))) == sorted({f"sm_{i.sm}" for i in found if i.kind == "ptx"})


def _sm_names(listing: str, prefix: str) -> list[str]:
    import re

    return [m for m in re.findall(rf"\b({prefix}\d+)", listing)]


def test_the_default_relative_build_dir(fixture_options, tmp_path):
    options = fixture_options()
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "flashinfer_build.cli.main",
            "build",
            "--preset",
            "ci",
            "--only",
            "merge_*",
            "--cache-dir",
            str(options.cache_dir),
            "-j",
            "2",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "FLASHINFER_BUILD_CSRC_DIR": str(options.csrc_dir)},
    )
    assert run.returncode == 0, run.stderr
    assert {p.parent.name for p in (work / "build").glob("*/manifest.json")} == {"sm90a", "sm80"}


def test_dry_run_compiles_nothing(fixture_options, toolchain):
    options = dataclasses.replace(fixture_options(), dry_run=True)
    result = build(options, toolchain)
    assert not result.compiled and not result.packs and not options.build_dir.exists()
