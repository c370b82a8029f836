"""The content-addressed cache: what invalidates a key, and that entries appear only whole."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

from buildhelp import copy_fixture_csrc, fake_toolchain
from flashinfer_build.wheelbuild.build import plan_build
from flashinfer_build.wheelbuild.cache import STALE_TEMP_SECONDS, ObjectCache, unit_key
from flashinfer_build.wheelbuild.options import BuildOptions
from flashinfer_build.wheelbuild.unit import MARKER


def _options(tmp_path, csrc, **changes):
    return BuildOptions(
        matrix="ci",
        only=("merge_*",),
        build_dir=tmp_path / "build",
        cache_dir=tmp_path / "cache",
        csrc_dir=csrc,
        **changes,
    )


def _keys(options, toolchain=None):
    return {u.id: u.key for u in plan_build(options, toolchain or fake_toolchain()).units}


def test_unit_key_depends_on_every_input():
    base = dict(source="s", headers=[("a.h", b"1")], flags=["-O3"], versions={"nvcc": "13.0.88"})
    key = unit_key(**base)
    assert key == unit_key(**base)
    for change in (
        dict(source="t"),
        dict(headers=[("a.h", b"2")]),
        dict(headers=[("b.h", b"1")]),
        dict(flags=["-O2"]),
        dict(versions={"nvcc": "13.0.89"}),
    ):
        assert unit_key(**{**base, **change}) != key, change


def test_plan_keys_are_stable_and_follow_sources_flags_and_toolchain(tmp_path):
    csrc = copy_fixture_csrc(tmp_path / "csrc")
    options = _options(tmp_path, csrc)
    keys = _keys(options)
    assert set(keys) == {"merge_sm90a_bf16", "merge_sm80_bf16"} and len(set(keys.values())) == 2
    assert _keys(options) == keys

    header = csrc / "fixture.cuh"
    header.write_text(header.read_text() + "\n// an edit\n")
    after_header = _keys(options)
    assert all(after_header[i] != keys[i] for i in keys)

    template = csrc / "instantiate" / "merge.cu.in"
    template.write_text(template.read_text() + "\n// another edit\n")
    after_source = _keys(options)
    assert all(after_source[i] != after_header[i] for i in keys)

    assert _keys(dataclasses.replace(options, lineinfo=True)).keys() == keys.keys()
    assert all(_keys(dataclasses.replace(options, lineinfo=True))[i] != after_source[i] for i in keys)
    for change in (
        dict(nvcc_version="13.0.99"),
        dict(cutlass_version="4.3.0"),
        dict(host_compiler_version="g++ 14"),
    ):
        changed = _keys(options, fake_toolchain(**change))
        assert all(changed[i] != after_source[i] for i in keys), change


def test_paths_of_the_toolchain_are_not_part_of_the_key(tmp_path):
    options = _options(tmp_path, copy_fixture_csrc(tmp_path / "csrc"))
    moved = fake_toolchain(nvcc=tmp_path / "elsewhere" / "nvcc", cutlass_include=tmp_path / "cutlass")
    assert _keys(options, moved) == _keys(options)


def test_cached_units_are_not_compiled(tmp_path):
    options = _options(tmp_path, copy_fixture_csrc(tmp_path / "csrc"))
    plan = plan_build(options, fake_toolchain())
    assert len(plan.to_compile) == 2
    first = plan.units[0]
    first.object.parent.mkdir(parents=True)
    first.object.write_bytes(b"object")
    again = plan_build(options, fake_toolchain())
    assert [u.id for u in again.to_compile] == [u.id for u in plan.units[1:]]


def test_stale_temp_dirs_are_removed_and_fresh_ones_kept(tmp_path):
    cache = ObjectCache(tmp_path)
    old, fresh = cache.objects / "ab" / ".tmp-old", cache.objects / "ab" / ".tmp-fresh"
    old.mkdir(parents=True)
    fresh.mkdir()
    now = time.time()
    os.utime(old, (now - STALE_TEMP_SECONDS - 10,) * 2)
    cache.remove_stale_temps(now)
    assert not old.exists() and fresh.exists()


def _unit(out, *command):
    return [
        sys.executable,
        "-m",
        "flashinfer_build.wheelbuild.unit",
        "--label",
        "v",
        "--out",
        str(out),
        "--",
        *command,
    ]


def test_unit_publishes_only_finished_outputs(tmp_path):
    out = tmp_path / "objects" / "v.o"
    failed = subprocess.run(
        _unit(out, "sh", "-c", 'echo half > "$1"; echo oops >&2; exit 3', "_", "@OUT@"),
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 3 and not out.exists()
    assert failed.stdout.strip().splitlines()[-1].startswith(f"{MARKER}\tv\tfailed\t")
    ok = subprocess.run(
        _unit(out, "sh", "-c", 'echo whole > "$1"', "_", "@OUT@"), capture_output=True, text=True
    )
    assert ok.returncode == 0 and out.read_text() == "whole\n"
    assert ok.stdout.strip().splitlines()[-1].startswith(f"{MARKER}\tv\tok\t")
    assert [p.name for p in out.parent.iterdir()] == ["v.o"]


def test_a_killed_unit_leaves_no_entry(tmp_path):
    out = tmp_path / "objects" / "v.o"
    proc = subprocess.Popen(
        _unit(out, "sh", "-c", 'echo half > "$1"; sleep 30', "_", "@OUT@"),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while not list(out.parent.glob(".tmp-*/v.o")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(out.parent.glob(".tmp-*/v.o")), "the unit never started writing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
