"""`flashinfer-build build`: render sources, write build.ninja, run ninja, write one pack per arch.

    build/<arch>/gen/<id>.cu                 rendered instantiation sources (written when changed)
    build/build.ninja                        compile edges for cache misses, one link edge per arch
    build/<arch>/libfib_kernels_<arch>.so    every compiled unit of the arch, CUDA runtime static
    build/<arch>/manifest.json               the variants in that library (manifest.py)
Objects live in the content-addressed cache (cache.py); a unit whose key is cached is not compiled.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..variants import InvalidVariant, Matrix, Variant, load_matrix, select
from . import planner
from .cache import ObjectCache, source_hash, unit_key
from .codegen import render, template_path, write_if_different
from .errors import CompileError, ConfigError
from .manifest import MANIFEST, render_manifest, variant_entry
from .ninja_file import CompileEdge, LinkEdge, render_ninja
from .ninja_run import EdgeResult, run_ninja
from .options import BuildOptions
from .sources import local_includes, read_header
from .targets import TARGETS, Target
from .toolchain import Toolchain
from .unit import OUT_PLACEHOLDER

COMMON_FLAGS = ("-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC")
# Intermediate files named after the object instead of nvcc's pid-numbered temp names, which would
# otherwise end up in the object and make builds differ byte for byte.
REPRODUCIBLE_FLAGS = ("-objtemp",)


def compile_flags(target: Target, *, lineinfo: bool) -> tuple[str, ...]:
    """The flags that decide an object's bytes (include paths are covered by the toolchain versions)."""
    return (*COMMON_FLAGS, *REPRODUCIBLE_FLAGS, *(("-lineinfo",) if lineinfo else ()), *target.gencode)


@dataclass(frozen=True, kw_only=True)
class Unit:
    variant: Variant
    source: Path  # the rendered file in the build dir
    text: str
    key: str
    source_hash: str
    object: Path  # in the cache
    cached: bool

    @property
    def id(self) -> str:
        return self.variant.id


@dataclass(frozen=True, kw_only=True)
class HostUnit:
    """The host planner (wheelbuild/planner.py): host C++, one object linked into every arch's pack."""

    source: Path
    key: str
    object: Path  # in the cache
    cached: bool


@dataclass(frozen=True, kw_only=True)
class BuildPlan:
    options: BuildOptions
    toolchain: Toolchain
    matrix: Matrix
    units: tuple[Unit, ...]
    no_template: dict[str, tuple[str, ...]]  # family -> ids skipped because its template does not exist
    planner: HostUnit | None = None  # None: these kernel sources have no planner (packs plan in Python)

    @property
    def to_compile(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.units if not u.cached)

    def units_for(self, arch: str) -> tuple[Unit, ...]:
        return tuple(u for u in self.units if u.variant.arch == arch)

    def compile_command(self, unit: Unit) -> tuple[str, ...]:
        tc, opts = self.toolchain, self.options
        return (
            str(tc.nvcc),
            *compile_flags(TARGETS[unit.variant.arch], lineinfo=opts.lineinfo),
            "-I",
            str(opts.csrc_dir),
            "-I",
            str(tc.cutlass_include),
            "-c",
            str(unit.source),
            "-o",
            OUT_PLACEHOLDER,
        )

    def planner_command(self) -> tuple[str, ...]:
        src = self.planner.source
        return (str(self.toolchain.nvcc), *planner.nvcc_flags(), "-c", str(src), "-o", OUT_PLACEHOLDER)

    def link_command(self, objects: Iterable[Path]) -> tuple[str, ...]:
        link_dirs = [f"-L{d}" for d in self.toolchain.link_dirs]
        # -nodlink: without relocatable device code there is nothing to device-link, and the
        # device-link stub would add an sm_75 cubin and the toolchain's absolute paths to every pack.
        link = (str(self.toolchain.nvcc), "-shared", "-nodlink", "-cudart", "static", *link_dirs)
        return (*link, *map(str, objects), "-o", OUT_PLACEHOLDER)


@dataclass
class BuildResult:
    plan: BuildPlan
    compiled: dict[str, float] = field(default_factory=dict)  # id -> seconds
    failed: dict[str, str] = field(default_factory=dict)  # id or arch -> compiler message
    packs: dict[str, Path] = field(default_factory=dict)  # arch -> pack dir


class Reporter:
    """What a build tells its caller while it runs; the CLI draws it with rich. Default: nothing."""

    def planned(self, plan: BuildPlan) -> None: ...

    def unit_finished(self, label: str, ok: bool, seconds: float, output: str) -> None: ...

    def message(self, text: str) -> None: ...

    def close(self) -> None:
        """The build is over, finished or not."""


def select_matrix(options: BuildOptions) -> Matrix:
    try:
        matrix = load_matrix(options.matrix)
        return select(matrix, only=options.only, skip=options.skip, archs=options.archs)
    except (InvalidVariant, ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None


def plan_build(options: BuildOptions, toolchain: Toolchain) -> BuildPlan:
    matrix = select_matrix(options)
    if not len(matrix):
        raise ConfigError(
            f"no variant of {options.matrix!r} matches only={list(options.only)} "
            f"skip={list(options.skip)} archs={list(options.archs)}; see `flashinfer-build list`"
        )
    cache = ObjectCache(options.cache_dir)
    csrc = options.csrc_dir.resolve()
    units: list[Unit] = []
    no_template: dict[str, list[str]] = {}
    for variant in matrix:
        if not template_path(csrc, variant.family).is_file():
            no_template.setdefault(variant.family, []).append(variant.id)
            continue
        text = render(variant, csrc, sm90_prefill_mainloop=options.sm90_prefill_mainloop)
        source = (options.build_dir / variant.arch / "gen" / f"{variant.id}.cu").resolve()
        headers = [
            (p.relative_to(csrc).as_posix(), read_header(p))
            for p in local_includes(text, source.parent.resolve(), (csrc,))
        ]
        flags = compile_flags(TARGETS[variant.arch], lineinfo=options.lineinfo)
        key = unit_key(source=text, headers=headers, flags=flags, versions=toolchain.versions())
        obj = cache.object_path(key, variant.id)
        units.append(
            Unit(
                variant=variant,
                source=source,
                text=text,
                key=key,
                source_hash=source_hash(text, headers),
                object=obj,
                cached=cache.has(obj),
            )
        )
    if not units:
        raise ConfigError(
            f"none of the {len(matrix)} selected variants has an instantiation template "
            f"yet (missing: {', '.join(str(template_path(csrc, f)) for f in no_template)})"
        )
    return BuildPlan(
        options=options,
        toolchain=toolchain,
        matrix=matrix,
        units=tuple(units),
        no_template={f: tuple(ids) for f, ids in no_template.items()},
        planner=_planner_unit(csrc, cache, toolchain),
    )


def _planner_unit(csrc: Path, cache: ObjectCache, toolchain: Toolchain) -> HostUnit | None:
    src = planner.source(csrc)
    if src is None:
        return None
    text = src.read_text()
    headers = [
        (p.relative_to(csrc).as_posix(), read_header(p)) for p in local_includes(text, src.parent, (csrc,))
    ]
    key = unit_key(source=text, headers=headers, flags=planner.nvcc_flags(), versions=toolchain.versions())
    obj = cache.object_path(key, planner.LABEL)
    return HostUnit(source=src, key=key, object=obj, cached=cache.has(obj))


def run_build(plan: BuildPlan, reporter: Reporter | None = None) -> BuildResult:
    reporter = reporter or Reporter()
    try:
        if plan.options.dry_run:
            reporter.planned(plan)
            return BuildResult(plan=plan)
        with _exclusive(plan.options.build_dir, reporter):
            return _run_build(plan, reporter)
    finally:
        reporter.close()


@contextlib.contextmanager
def _exclusive(build_dir: Path, reporter: Reporter):
    """One build at a time per build directory (they share build.ninja and ninja's log)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            reporter.message(f"waiting for another build in {build_dir} to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run_build(plan: BuildPlan, reporter: Reporter) -> BuildResult:
    opts = plan.options
    result = BuildResult(plan=plan)
    reporter.planned(plan)
    ObjectCache(opts.cache_dir).remove_stale_temps()
    for unit in plan.units:
        write_if_different(unit.source, unit.text)
    ninja_path = opts.build_dir / "build.ninja"
    compiles = [
        CompileEdge(
            label=u.id, source=u.source.resolve(), output=u.object.resolve(), command=plan.compile_command(u)
        )
        for u in plan.to_compile
    ]
    host = plan.planner
    if host is not None and not host.cached:
        compiles.append(
            CompileEdge(
                label=planner.LABEL,
                source=host.source,
                output=host.object.resolve(),
                command=plan.planner_command(),
            )
        )

    def link_edges(available: set[str]) -> list[LinkEdge]:
        edges = []
        for arch in opts.archs:
            objects = tuple(u.object.resolve() for u in plan.units_for(arch) if u.id in available)
            if objects and planner.LABEL in available:
                objects += (host.object.resolve(),)
            if objects:
                edges.append(
                    LinkEdge(
                        label=arch,
                        inputs=objects,
                        output=_library(opts, arch).resolve(),
                        command=plan.link_command(objects),
                    )
                )
        return edges

    everything = {u.id for u in plan.units} | ({planner.LABEL} if host is not None else set())
    write_if_different(ninja_path, render_ninja(compiles, link_edges(everything)))
    if compiles:
        _run_ninja(plan, ninja_path, [str(e.output) for e in compiles], result, reporter)
    if result.failed and not opts.keep_going:
        raise CompileError(result.failed)
    available = {u.id for u in plan.units if u.object.is_file()}
    if host is not None and host.object.is_file():
        available.add(planner.LABEL)
    links = link_edges(available)
    write_if_different(ninja_path, render_ninja(compiles, links))
    if links:
        _run_ninja(plan, ninja_path, [str(e.output) for e in links], result, reporter)
    for arch in opts.archs:
        units = [u for u in plan.units_for(arch) if u.id in available]
        if units and arch not in result.failed:
            result.packs[arch] = _write_manifest(plan, arch, units, with_planner=planner.LABEL in available)
    if result.failed:
        raise CompileError(result.failed)
    return result


def build(options: BuildOptions, toolchain: Toolchain, reporter: Reporter | None = None) -> BuildResult:
    return run_build(plan_build(options, toolchain), reporter)


def _library(options: BuildOptions, arch: str) -> Path:
    return options.build_dir / arch / TARGETS[arch].library


def _write_manifest(plan: BuildPlan, arch: str, units: list[Unit], *, with_planner: bool) -> Path:
    pack = plan.options.build_dir / arch
    entries = [variant_entry(u.variant, source_hash=u.source_hash, build_key=u.key) for u in units]
    text = render_manifest(
        arch=arch,
        library=TARGETS[arch].library,
        versions=plan.toolchain.versions(),
        entries=entries,
        planner=planner.SYMBOLS if with_planner else None,
    )
    write_if_different(pack / MANIFEST, text)
    return pack


def _run_ninja(
    plan: BuildPlan, ninja_file: Path, targets: list[str], result: BuildResult, reporter: Reporter
) -> None:
    def on_edge(edge: EdgeResult) -> None:
        if edge.ok:
            result.compiled[edge.label] = edge.seconds
        else:
            result.failed[edge.label] = edge.output
        reporter.unit_finished(edge.label, edge.ok, edge.seconds, edge.output)

    opts = plan.options
    rc = run_ninja(
        plan.toolchain.ninja,
        ninja_file,
        cwd=opts.build_dir,
        targets=targets,
        jobs=opts.jobs,
        keep_going=opts.keep_going,
        on_edge=on_edge,
        on_message=reporter.message,
    )
    if rc != 0 and not result.failed:
        raise CompileError({"ninja": f"ninja exited with {rc}; see its messages above"})
