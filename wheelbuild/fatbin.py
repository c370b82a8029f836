"""Reads which GPU code a shared object carries, from the fatbinaries in its `.nv_fatbin` section.

Works without the CUDA binary utilities (cuobjdump is not in the PyPI toolchain). Layout, as nvcc
13.0 writes it: the section holds containers (u32 magic 0xBA55ED50, u16 version, u16 header size,
u64 size of the entries), each a run of entries (u16 kind: 1 PTX, 2 ELF; u16 version; u32 header
size; u64 payload size; ...; u32 SM version at byte 28; u32 flags at byte 40, bit 20 = arch-specific
"a" target such as sm_90a). tests/build checks this against cuobjdump where it exists.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import PackageError
from .targets import Target

FATBIN_MAGIC = 0xBA55ED50
_KINDS = {1: "ptx", 2: "elf"}
_ARCH_SPECIFIC = 1 << 20


@dataclass(frozen=True, order=True)
class Image:
    kind: str  # "elf" (machine code) or "ptx"
    sm: int  # 80, 90, ...
    arch_specific: bool = False

    def __str__(self) -> str:
        prefix = "sm" if self.kind == "elf" else "compute"
        return f"{self.kind} {prefix}_{self.sm}{'a' if self.arch_specific else ''}"


def elf_section(data: bytes, name: str) -> bytes | None:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise PackageError("not a little-endian 64-bit ELF file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]
    for name_offset, _type, _flags, _addr, offset, size in headers:
        start = names_offset + name_offset
        if data[start : data.index(b"\0", start)].decode() == name:
            return data[offset : offset + size]
    return None


def images(path: Path) -> list[Image]:
    """Every PTX and machine-code image in the shared object (or object file) at `path`."""
    section = elf_section(Path(path).read_bytes(), ".nv_fatbin")
    if section is None:
        return []
    found = []
    pos = 0
    while pos + 16 <= len(section):
        magic, _version, header_size, entries_size = struct.unpack_from("<IHHQ", section, pos)
        if magic != FATBIN_MAGIC:
            if section[pos:].strip(b"\0"):
                raise PackageError(f"{path}: unexpected bytes in .nv_fatbin at offset {pos}")
            break
        entry = pos + header_size
        end = entry + entries_size
        while entry < end:
            kind, _v, entry_header, payload = struct.unpack_from("<HHIQ", section, entry)
            sm = struct.unpack_from("<I", section, entry + 28)[0]
            flags = struct.unpack_from("<I", section, entry + 40)[0]
            found.append(Image(_KINDS.get(kind, f"kind{kind}"), sm, bool(flags & _ARCH_SPECIFIC)))
            entry += entry_header + payload
        pos = end
    return found


def check_target_code(path: Path, target: Target) -> list[Image]:
    """Raise PackageError unless `path` holds machine code for `target`'s SMs (and PTX for its virtual
    archs) and nothing else."""
    found = images(path)
    arch_specific = target.arch.endswith("a")
    wrong = [
        im
        for im in found
        if (im.kind == "elf" and (im.sm not in target.machine_code or im.arch_specific != arch_specific))
        or (im.kind == "ptx" and im.sm not in target.ptx)
        or im.kind not in ("elf", "ptx")
    ]
    missing_sm = {sm for sm in target.machine_code if not any(i.kind == "elf" and i.sm == sm for i in found)}
    missing_ptx = {sm for sm in target.ptx if not any(i.kind == "ptx" and i.sm == sm for i in found)}
    if wrong or missing_sm or missing_ptx:
        raise PackageError(
            f"{path}: GPU code does not match target {target.arch}: "
            f"unexpected {sorted(set(map(str, wrong))) or 'nothing'}, missing machine code for "
            f"{sorted(missing_sm) or 'nothing'}, missing PTX for {sorted(missing_ptx) or 'nothing'}"
        )
    return found
