"""The files a generated unit includes from kernels/csrc, found by scanning #include lines.

The cache key hashes their contents. Headers outside kernels/csrc (CUDA, CUTLASS, the C++ library)
are covered by the toolchain versions in the key instead. Includes inside `#if` blocks are followed
too: a key that depends on a file it did not need costs a rebuild, never a stale object.
"""

from __future__ import annotations

import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.MULTILINE)


def local_includes(text: str, base_dir: Path, include_dirs: tuple[Path, ...]) -> list[Path]:
    """Every file under `include_dirs` that `text` (living in `base_dir`) includes, transitively, sorted."""
    found: set[Path] = set()
    pending = [(text, base_dir)]
    while pending:
        body, here = pending.pop()
        for name in _INCLUDE.findall(body):
            path = _resolve(name, here, include_dirs)
            if path is not None and path not in found:
                found.add(path)
                pending.append((path.read_text(errors="replace"), path.parent))
    return sorted(found)


def _resolve(name: str, here: Path, include_dirs: tuple[Path, ...]) -> Path | None:
    for directory in (here, *include_dirs):
        candidate = (directory / name).resolve()
        if candidate.is_file() and any(candidate.is_relative_to(d.resolve()) for d in include_dirs):
            return candidate
    return None
