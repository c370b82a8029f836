"""The files a generated unit includes from kernels/csrc, found by scanning #include lines.

The cache key hashes their contents. Headers outside kernels/csrc (CUDA, CUTLASS, the C++ library)
are covered by the toolchain versions in the key instead. Includes inside `#if` blocks are followed
too: a key that depends on a file it did not need costs a rebuild, never a stale object.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)


def local_includes(text: str, base_dir: Path, include_dirs: tuple[Path, ...]) -> list[Path]:
    """Every file under `include_dirs` that `text` (living in `base_dir`) includes, transitively, sorted."""
    roots = tuple(d.resolve() for d in include_dirs)
    base_dir = base_dir.resolve()
    found: set[Path] = set()
    pending = [(name, base_dir) for name in _INCLUDE.findall(text)]
    while pending:
        name, here = pending.pop()
        path = _resolve(name, here, roots)
        if path is not None and path not in found:
            found.add(path)
            pending.extend((child, path.parent) for child in _includes_of(path, *_stamp(path)))
    return sorted(found)


def read_header(path: Path) -> bytes:
    """A header's bytes, read once per version of the file (a `list` of the full matrix reads each
    header for a thousand units)."""
    return _read(path, *_stamp(path))


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=1024)
def _read(path: Path, mtime_ns: int, size: int) -> bytes:
    return path.read_bytes()


@functools.lru_cache(maxsize=1024)
def _includes_of(path: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    return tuple(_INCLUDE.findall(_read(path, mtime_ns, size).decode(errors="replace")))


def _resolve(name: str, here: Path, roots: tuple[Path, ...]) -> Path | None:
    # normpath, not resolve(): the roots are resolved once, and symlink-free joins below them stay so.
    for directory in (here, *roots):
        candidate = os.path.normpath(os.path.join(directory, name))
        if any(candidate.startswith(f"{root}{os.sep}") for root in roots) and os.path.isfile(candidate):
            return Path(candidate)
    return None
