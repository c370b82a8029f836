"""Shared pieces for the build-system tests: a toolchain description that runs nothing, fixture trees."""

from __future__ import annotations

import shutil
from pathlib import Path

from flashinfer_build.wheelbuild.toolchain import Toolchain

FIXTURE_CSRC = Path(__file__).resolve().parent.parent / "build" / "fixtures" / "csrc"


def fake_toolchain(**changes) -> Toolchain:
    """A Toolchain for planning and hashing only: its paths do not exist."""
    values = dict(
        nvcc=Path("/nonexistent/nvcc"),
        nvcc_version="13.0.88",
        cuda_origin="test",
        link_dirs=(),
        cutlass_include=Path("/nonexistent/cutlass"),
        cutlass_version="4.2.0",
        ninja=Path("/nonexistent/ninja"),
        host_compiler=Path("/nonexistent/g++"),
        host_compiler_version="g++ test",
    )
    values.update(changes)
    return Toolchain(**values)


def copy_fixture_csrc(dest: Path) -> Path:
    shutil.copytree(FIXTURE_CSRC, dest)
    return dest


def fatbin_bytes(images: list[tuple[str, int, bool]]) -> bytes:
    """A fatbin container as nvcc 13.0 lays it out (wheelbuild/fatbin.py), one entry per image with a
    small dummy payload."""
    import struct

    entries = b""
    for kind, sm, arch_specific in images:
        payload = b"\x7fELF".ljust(24, b"\0") if kind == "elf" else b".version 9.0\n".ljust(24, b"\0")
        header = bytearray(64)
        struct.pack_into("<HHIQ", header, 0, 2 if kind == "elf" else 1, 0x101, 64, len(payload))
        struct.pack_into("<I", header, 28, sm)
        struct.pack_into("<I", header, 40, 0x11 | (1 << 20 if arch_specific else 0))
        entries += bytes(header) + payload
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(entries)) + entries


def fake_pack_library(path: Path, images: list[tuple[str, int, bool]]) -> Path:
    """A real shared object, built with the host C compiler, whose .nv_fatbin section holds `images`."""
    import subprocess

    data = fatbin_bytes(images)
    source = path.with_suffix(".c")
    source.write_text(
        '__attribute__((section(".nv_fatbin"), used, aligned(8))) const unsigned char fib_fatbin[] = {'
        + ",".join(str(b) for b in data)
        + "};\nint fib_fake_run(void) { return 0; }\n"
    )
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(path), str(source)], check=True)
    source.unlink()
    return path


def fake_pack(
    pack_dir: Path, arch: str, images: list[tuple[str, int, bool]], build_key: str = "0" * 64
) -> Path:
    """A pack directory (manifest + library) as `flashinfer-build build` writes it, without nvcc."""
    from flashinfer_build.variants import Variant
    from flashinfer_build.wheelbuild.manifest import render_manifest, variant_entry
    from flashinfer_build.wheelbuild.targets import TARGETS

    pack_dir.mkdir(parents=True, exist_ok=True)
    fake_pack_library(pack_dir / TARGETS[arch].library, images)
    entries = [variant_entry(Variant(family="merge", arch=arch), source_hash="0" * 16, build_key=build_key)]
    (pack_dir / "manifest.json").write_text(
        render_manifest(
            arch=arch,
            library=TARGETS[arch].library,
            versions={"nvcc": "13.0.88", "cutlass": "4.2.0"},
            entries=entries,
        )
    )
    return pack_dir


RIGHT_IMAGES = {"sm90a": [("elf", 90, True)], "sm80": [("elf", 80, False), ("ptx", 80, False)]}
