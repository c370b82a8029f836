"""One wheel per kernel pack: `flashinfer_build_kernels_<arch>-<version>-py3-none-manylinux_2_<N>_x86_64.whl`.

    flashinfer_build_kernels_<arch>/__init__.py          PACK_DIR; found through the entry point
    flashinfer_build_kernels_<arch>/manifest.json
    flashinfer_build_kernels_<arch>/libfib_kernels_<arch>.so
    flashinfer_build_kernels_<arch>-<version>.dist-info/{METADATA,WHEEL,entry_points.txt,top_level.txt,RECORD}

The kernels use a C ABI and load with ctypes, so the wheel is `py3-none` for every Python and torch.
The platform tag is manylinux_2_28, or the newest glibc the shared object needs if that is later (a
pack linked on a newer system needs that glibc; the release workflow links in a manylinux_2_28
image). Reproducible: entries sorted, fixed timestamps ($SOURCE_DATE_EPOCH, default 1980-01-01),
fixed permissions, so the same pack always gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

from .codegen import write_atomic
from .errors import PackageError
from .fatbin import check_target_code, elf_section
from .manifest import MANIFEST, builder_version
from .targets import TARGETS

ENTRY_POINT_GROUP = "flashinfer_build.kernel_packs"  # kernels/loader.py reads the same group
MIN_GLIBC = (2, 28)
DEFAULT_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip entry can hold

_INIT = '''"""Kernel pack {dist}: {count} attention variants for {arch} (manifest.json, {library}).

flashinfer-build finds it through the `{group}` entry point; nothing here needs importing.
"""

from pathlib import Path

PACK_DIR = Path(__file__).parent
'''


def platform_tag(library: Path) -> str:
    dynstr = elf_section(library.read_bytes(), ".dynstr") or b""
    needed = [tuple(map(int, m)) for m in re.findall(rb"GLIBC_(\d+)\.(\d+)", dynstr)]
    major, minor = max([MIN_GLIBC, *needed])
    return f"manylinux_{major}_{minor}_x86_64"


def wheel_tag(library: Path) -> str:
    return f"py3-none-{platform_tag(library)}"


def source_date_epoch(env: Mapping[str, str]) -> int:
    value = env.get("SOURCE_DATE_EPOCH")
    if not value:
        return DEFAULT_EPOCH
    try:
        return max(DEFAULT_EPOCH, int(value))
    except ValueError:
        raise PackageError(f"SOURCE_DATE_EPOCH={value!r} is not an integer") from None


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel(
    pack_dir: Path, dist_dir: Path, *, env: Mapping[str, str], version: str | None = None
) -> Path:
    """Package the pack in `pack_dir` (a build/<arch> directory) into a wheel in `dist_dir`."""
    try:
        manifest = json.loads((pack_dir / MANIFEST).read_text())
        target = TARGETS[manifest["arch"]]
        library = pack_dir / manifest["library"]
        library_bytes = library.read_bytes()
    except (OSError, ValueError, KeyError) as e:
        raise PackageError(
            f"{pack_dir} is not a built kernel pack ({e}); run `flashinfer-build build`"
        ) from None
    check_target_code(library, target)
    version = version or builder_version()
    tag = wheel_tag(library)
    name = target.distribution.replace("-", "_")
    dist_info = f"{name}-{version}.dist-info"
    pkg = target.package
    count = len(manifest["variants"])
    files: dict[str, bytes] = {
        f"{pkg}/__init__.py": _INIT.format(
            dist=target.distribution,
            count=count,
            arch=target.arch,
            library=library.name,
            group=ENTRY_POINT_GROUP,
        ).encode(),
        f"{pkg}/{MANIFEST}": (pack_dir / MANIFEST).read_bytes(),
        f"{pkg}/{library.name}": library_bytes,
        f"{dist_info}/METADATA": _metadata(target.distribution, version, target.arch, count).encode(),
        f"{dist_info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: flashinfer-build {builder_version()}\n"
            f"Root-Is-Purelib: false\nTag: {tag}\n"
        ).encode(),
        f"{dist_info}/entry_points.txt": f"[{ENTRY_POINT_GROUP}]\n{target.arch} = {pkg}\n".encode(),
        f"{dist_info}/top_level.txt": f"{pkg}\n".encode(),
    }
    record_name = f"{dist_info}/RECORD"
    record = "".join(f"{path},{record_hash(data)},{len(data)}\n" for path, data in sorted(files.items()))
    files[record_name] = (record + f"{record_name},,\n").encode()
    wheel_path = Path(dist_dir) / f"{name}-{version}-{tag}.whl"
    # Package first, metadata after it and RECORD last, as installers expect.
    order = sorted(files, key=lambda path: (path.startswith(dist_info), path == record_name, path))
    write_atomic(wheel_path, _zip(files, order=order, epoch=source_date_epoch(env)))
    return wheel_path


def _metadata(distribution: str, version: str, arch: str, count: int) -> str:
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {distribution}\n"
        f"Version: {version}\n"
        f"Summary: flashinfer-build attention kernels for {arch} ({count} variants)\n"
        "License: Apache-2.0\n"
        "Requires-Python: >=3.10\n"
        "Description-Content-Type: text/plain\n"
        "\n"
        f"Ahead-of-time compiled attention kernels for {arch} GPUs with a plain C ABI. Install next to\n"
        "flashinfer-build, which finds this pack through an entry point and checks its ABI version.\n"
    )


def _zip(files: dict[str, bytes], *, order: list[str], epoch: int) -> bytes:
    import io

    date_time = time.gmtime(epoch)[:6]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in order:
            info = zipfile.ZipInfo(path, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so external_attr holds the mode
            mode = 0o755 if path.endswith(".so") else 0o644
            info.external_attr = (0o100000 | mode) << 16
            zf.writestr(info, files[path], compresslevel=6)
    return buffer.getvalue()
