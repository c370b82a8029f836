"""Wheel assembly and the GPU-code check, on packs made with the host C compiler (no nvcc needed)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import zipfile

import pytest
from buildhelp import RIGHT_IMAGES, fake_pack, fake_pack_library
from flashinfer_build.wheelbuild.errors import PackageError
from flashinfer_build.wheelbuild.fatbin import Image, check_target_code, images
from flashinfer_build.wheelbuild.targets import TARGETS
from flashinfer_build.wheelbuild.wheel import ENTRY_POINT_GROUP, build_wheel
from packaging.tags import parse_tag
from packaging.utils import parse_wheel_filename


def test_fatbin_images_are_read(tmp_path):
    lib = fake_pack_library(tmp_path / "lib.so", [("elf", 80, False), ("ptx", 80, False), ("elf", 90, True)])
    assert images(lib) == [Image("elf", 80), Image("ptx", 80), Image("elf", 90, True)]
    assert [str(i) for i in images(lib)] == ["elf sm_80", "ptx compute_80", "elf sm_90a"]


@pytest.mark.parametrize("arch", ["sm90a", "sm80"])
def test_the_right_code_passes(tmp_path, arch):
    lib = fake_pack_library(tmp_path / "lib.so", RIGHT_IMAGES[arch])
    assert check_target_code(lib, TARGETS[arch]) == images(lib)


@pytest.mark.parametrize(
    "arch, found, complaint",
    [
        ("sm90a", [("elf", 90, True), ("elf", 80, False)], "unexpected ['elf sm_80']"),
        ("sm90a", [("elf", 90, False)], "unexpected ['elf sm_90']"),  # sm_90 is not sm_90a
        ("sm90a", [("elf", 90, True), ("ptx", 90, True)], "unexpected ['ptx compute_90a']"),
        ("sm80", [("elf", 80, False)], "missing PTX for [80]"),
        ("sm80", [("ptx", 80, False)], "missing machine code for [80]"),
        ("sm80", [("elf", 80, False), ("ptx", 80, False), ("elf", 75, False)], "unexpected ['elf sm_75']"),
    ],
)
def test_wrong_code_is_refused(tmp_path, arch, found, complaint):
    lib = fake_pack_library(tmp_path / "lib.so", found)
    with pytest.raises(PackageError) as e:
        check_target_code(lib, TARGETS[arch])
    assert complaint in str(e.value) and arch in str(e.value)


def _entries(wheel) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


@pytest.mark.parametrize("arch", ["sm90a", "sm80"])
def test_wheel_names_tags_record_and_entry_point(tmp_path, arch):
    pack = fake_pack(tmp_path / "build" / arch, arch, RIGHT_IMAGES[arch])
    wheel = build_wheel(pack, tmp_path / "dist", env={}, version="1.2.3")
    name, version, _build, tags = parse_wheel_filename(wheel.name)
    assert (name, str(version)) == (f"flashinfer-build-kernels-{arch}", "1.2.3")
    assert {str(t) for t in tags} == {"py3-none-manylinux_2_28_x86_64"}  # the fake needs no newer glibc
    files = _entries(wheel)
    dist_info = f"flashinfer_build_kernels_{arch}-1.2.3.dist-info"
    package = f"flashinfer_build_kernels_{arch}"
    assert set(files) == {
        f"{package}/__init__.py",
        f"{package}/manifest.json",
        f"{package}/libfib_kernels_{arch}.so",
        *(f"{dist_info}/{n}" for n in ("METADATA", "WHEEL", "entry_points.txt", "top_level.txt", "RECORD")),
    }
    wheel_meta = files[f"{dist_info}/WHEEL"].decode()
    assert "Root-Is-Purelib: false" in wheel_meta
    (tag_line,) = [line for line in wheel_meta.splitlines() if line.startswith("Tag: ")]
    assert parse_tag(tag_line[5:]) == frozenset(tags)
    assert (
        f"Name: flashinfer-build-kernels-{arch}\nVersion: 1.2.3\n" in files[f"{dist_info}/METADATA"].decode()
    )
    assert files[f"{dist_info}/entry_points.txt"].decode() == f"[{ENTRY_POINT_GROUP}]\n{arch} = {package}\n"
    assert files[f"{package}/libfib_kernels_{arch}.so"] == (pack / f"libfib_kernels_{arch}.so").read_bytes()

    rows = list(csv.reader(io.StringIO(files[f"{dist_info}/RECORD"].decode())))
    assert {r[0] for r in rows} == set(files)
    for path, digest, size in rows:
        if path.endswith("RECORD"):
            assert (digest, size) == ("", "")
            continue
        data = files[path]
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={expected}" and int(size) == len(data), path


def test_wheels_are_byte_reproducible_with_fixed_metadata(tmp_path):
    pack = fake_pack(tmp_path / "build" / "sm90a", "sm90a", RIGHT_IMAGES["sm90a"])
    first = build_wheel(pack, tmp_path / "a", env={}).read_bytes()
    second = build_wheel(pack, tmp_path / "b", env={}).read_bytes()
    assert first == second
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        infos = zf.infolist()
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        modes = {i.filename.rsplit("/", 1)[-1]: (i.external_attr >> 16) & 0o777 for i in infos}
        assert modes.pop("libfib_kernels_sm90a.so") == 0o755 and set(modes.values()) == {0o644}
        assert infos[-1].filename.endswith(".dist-info/RECORD")
    dated = build_wheel(pack, tmp_path / "c", env={"SOURCE_DATE_EPOCH": "1700000000"})
    with zipfile.ZipFile(dated) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2023, 11, 14, 22, 13, 20)}


def test_a_pack_with_foreign_code_is_not_packaged(tmp_path):
    pack = fake_pack(tmp_path / "build" / "sm90a", "sm90a", [("elf", 80, False)])
    with pytest.raises(PackageError, match="does not match target sm90a"):
        build_wheel(pack, tmp_path / "dist", env={})
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())


def test_a_directory_without_a_pack_is_reported(tmp_path):
    with pytest.raises(PackageError, match="not a built kernel pack"):
        build_wheel(tmp_path, tmp_path / "dist", env={})
