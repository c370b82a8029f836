"""Content-addressed object cache: one compiled unit per key, shared by every build directory.

The key hashes everything that decides an object's bytes: the rendered source, the content of every
kernels/csrc header it includes, the compile flags and the toolchain versions. Entries appear only
by an atomic rename of a finished object (see unit.py), so an interrupted build leaves at most a
stray temp directory, which a later build removes; never a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

KEY_SCHEMA = 1  # bump when the key's recipe changes
STALE_TEMP_SECONDS = 24 * 3600


def default_cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "flashinfer-build"


def unit_key(
    *, source: str, headers: Iterable[tuple[str, bytes]], flags: Iterable[str], versions: Mapping[str, str]
) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"schema": KEY_SCHEMA, "flags": list(flags), "versions": dict(versions)}, sort_keys=True
        ).encode()
    )
    h.update(b"\0source\0" + source.encode())
    for name, content in headers:
        h.update(b"\0header\0" + name.encode() + b"\0" + hashlib.sha256(content).digest())
    return h.hexdigest()


def source_hash(source: str, headers: Iterable[tuple[str, bytes]]) -> str:
    """The sources alone (no flags or toolchain), as recorded in the manifest."""
    return unit_key(source=source, headers=headers, flags=(), versions={})[:16]


class ObjectCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    def object_path(self, key: str, variant_id: str) -> Path:
        # The file name is embedded in the object (nvcc -objtemp), so it must not vary between builds.
        return self.objects / key[:2] / f"{variant_id}-{key[:24]}.o"

    def has(self, path: Path) -> bool:
        return path.is_file()

    def remove_stale_temps(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if not self.objects.is_dir():
            return
        for tmp in self.objects.glob("*/.tmp-*"):
            try:
                if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError:
                pass

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.objects.rglob("*.o")) if self.objects.is_dir() else 0

    def clear(self) -> None:
        if self.root.is_dir():
            shutil.rmtree(self.objects, ignore_errors=True)
        os.makedirs(self.objects, exist_ok=True)
