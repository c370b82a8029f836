"""Options of the build and wheel commands, and where they come from.

Precedence, highest first: command line > environment (FLASHINFER_BUILD_<NAME>) > the
`[tool.flashinfer-build]` table of ./pyproject.toml > the defaults below. The environment and the
pyproject path are passed in, so tests describe any setting with plain dicts.

    name        env                           pyproject      default
    matrix      FLASHINFER_BUILD_MATRIX /     matrix /       "default" (a preset name or a matrix TOML path)
                FLASHINFER_BUILD_PRESET       preset
    only        FLASHINFER_BUILD_ONLY         only           ()  comma-separated globs on variant ids
    skip        FLASHINFER_BUILD_SKIP         skip           ()
    archs       FLASHINFER_BUILD_ARCH         arch           ("sm90a", "sm80")
    jobs        FLASHINFER_BUILD_JOBS         jobs           number of CPU cores
    build_dir   FLASHINFER_BUILD_DIR          build-dir      "build"
    cache_dir   FLASHINFER_BUILD_CACHE_DIR    cache-dir      $XDG_CACHE_HOME/flashinfer-build
    dist_dir    FLASHINFER_BUILD_DIST_DIR     dist-dir       "dist"
    keep_going  FLASHINFER_BUILD_KEEP_GOING   keep-going     False
    lineinfo    FLASHINFER_BUILD_LINEINFO     lineinfo       False (device line info for profilers; it
                                                                    embeds paths and file times, so such
                                                                    builds are not byte-reproducible)
    sm90_prefill_mainloop                     sm90-prefill-  True (sm90a prefill units with the wgmma
                FLASHINFER_BUILD_SM90_        mainloop              mainloop, instantiate/prefill_sm90.cu.in;
                PREFILL_MAINLOOP                                    off: the sm80 mainloop, as the sm80
                                                                    pack has it; docs/HOPPER_MAINLOOP.md)
    csrc_dir    FLASHINFER_BUILD_CSRC_DIR     csrc-dir       the installed kernels/csrc (kernel sources
                                                                    and instantiate/ templates; tests point
                                                                    it at a fixture tree)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from ..variants import AXES
from .cache import default_cache_dir
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT_TABLE = "flashinfer-build"


def _default_csrc() -> Path:
    return Path(__file__).resolve().parent.parent / "kernels" / "csrc"


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    matrix: str = "default"
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    archs: tuple[str, ...] = ("sm90a", "sm80")
    jobs: int = os.cpu_count() or 1
    build_dir: Path = Path("build")
    cache_dir: Path | None = None  # None: default_cache_dir(env)
    dist_dir: Path = Path("dist")
    keep_going: bool = False
    dry_run: bool = False
    lineinfo: bool = False
    sm90_prefill_mainloop: bool = True
    csrc_dir: Path = _default_csrc()

    def __post_init__(self) -> None:
        for arch in self.archs:
            if arch not in AXES["arch"]:
                raise ConfigError(f"unknown arch {arch!r}; archs are {', '.join(AXES['arch'])}")
        if not self.archs:
            raise ConfigError("no arch selected; archs are " + ", ".join(AXES["arch"]))
        if self.jobs < 1:
            raise ConfigError(f"jobs must be at least 1, got {self.jobs}")


def _split(value) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"expected a boolean (1/0, true/false), got {value!r}")


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"expected an integer, got {value!r}") from None


_PARSE = {
    "matrix": str,
    "only": _split,
    "skip": _split,
    "archs": _split,
    "jobs": _int,
    "build_dir": Path,
    "cache_dir": Path,
    "dist_dir": Path,
    "keep_going": _bool,
    "dry_run": _bool,
    "lineinfo": _bool,
    "sm90_prefill_mainloop": _bool,
    "csrc_dir": Path,
}
_ENV = {
    "matrix": ("FLASHINFER_BUILD_MATRIX", "FLASHINFER_BUILD_PRESET"),
    "only": ("FLASHINFER_BUILD_ONLY",),
    "skip": ("FLASHINFER_BUILD_SKIP",),
    "archs": ("FLASHINFER_BUILD_ARCH",),
    "jobs": ("FLASHINFER_BUILD_JOBS",),
    "build_dir": ("FLASHINFER_BUILD_DIR",),
    "cache_dir": ("FLASHINFER_BUILD_CACHE_DIR",),
    "dist_dir": ("FLASHINFER_BUILD_DIST_DIR",),
    "keep_going": ("FLASHINFER_BUILD_KEEP_GOING",),
    "lineinfo": ("FLASHINFER_BUILD_LINEINFO",),
    "sm90_prefill_mainloop": ("FLASHINFER_BUILD_SM90_PREFILL_MAINLOOP",),
    "csrc_dir": ("FLASHINFER_BUILD_CSRC_DIR",),
}
_PYPROJECT = {
    "matrix": ("matrix", "preset"),
    "only": ("only",),
    "skip": ("skip",),
    "archs": ("arch",),
    "jobs": ("jobs",),
    "build_dir": ("build-dir",),
    "cache_dir": ("cache-dir",),
    "dist_dir": ("dist-dir",),
    "keep_going": ("keep-going",),
    "lineinfo": ("lineinfo",),
    "sm90_prefill_mainloop": ("sm90-prefill-mainloop",),
    "csrc_dir": ("csrc-dir",),
}


def read_pyproject(path: Path | None) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get("tool", {}).get(PYPROJECT_TABLE, {})
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    known = {key for keys in _PYPROJECT.values() for key in keys}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown [tool.{PYPROJECT_TABLE}] keys {unknown}; known: {sorted(known)}")
    return table


def resolve(
    cli: Mapping[str, object],
    env: Mapping[str, str],
    pyproject: Path | None = Path("pyproject.toml"),
) -> BuildOptions:
    """BuildOptions from command-line values (None = not given), the environment and pyproject.toml."""
    table = read_pyproject(pyproject)
    values: dict[str, object] = {}
    for f in fields(BuildOptions):
        name = f.name
        raw = cli.get(name)
        if raw is None or raw == ():
            raw = next((env[k] for k in _ENV.get(name, ()) if env.get(k)), None)
            source = "environment"
        else:
            source = "command line"
        if raw is None:
            raw = next((table[k] for k in _PYPROJECT.get(name, ()) if k in table), None)
            source = "pyproject.toml"
        if raw is None:
            continue
        try:
            values[name] = _PARSE[name](raw)
        except ConfigError as e:
            raise ConfigError(f"{name} (from the {source}): {e}") from None
    if values.get("cache_dir") is None:
        values["cache_dir"] = default_cache_dir(env)
    return BuildOptions(**values)
