"""`flashinfer-build bench`: our kernels against PyTorch's attention backends (library: kernels/bench/)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..wheelbuild.errors import ConfigError
from .console import log, out
from .options import built_option, selection_options
from .verify import EnvironmentFailure, VerifyFailed, progress_bar, selected_variants

WORKLOAD_HELP = (
    "Comma-separated workload sets: decode, prefill, serving, skewed, shared_prefix, variants "
    "(default: all; only the --shape workloads when --shape is given)."
)


@click.command("bench")
@selection_options
@built_option
@click.option("--workloads", help=WORKLOAD_HELP)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    help="A workload of your own (repeatable), e.g. 'decode:batch=32,kv=4096,kv_dtype=fp8e4m3' or "
    "'prefill:batch=2,tokens=8192,hd=128,causal=true'.",
)
@click.option(
    "--baselines",
    default="sdpa-flash,sdpa-cudnn,sdpa-efficient,flex",
    show_default=True,
    help="Comma-separated peers to time beside ours ('none' for none).",
)
@click.option("--cuda-graph", is_flag=True, help="Time CUDA-graph replays instead of eager calls.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the inputs.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full report here.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write a CSV (one line a method).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Save a PNG of ours vs the peers.")
def bench(workloads, shapes, baselines, cuda_graph, seed, json_path, csv_path, plot_path, built, **selection):
    """Time the selected variants on standard and user workloads, beside PyTorch SDPA and FlexAttention.

    Each method is checked against the reference before it is timed; times are CUDA-event medians over
    rotated inputs. Exit code 1 when one of our kernels computes a wrong result, 2 when no GPU or
    kernel pack is usable."""
    import torch

    from ..kernels import bench as lib
    from ..kernels import loader
    from ..kernels.bench import baselines as bench_baselines
    from ..kernels.bench import report as bench_report
    from ..kernels.bench import timing as bench_timing
    from ..kernels.bench.workloads import WORKLOAD_SETS, parse_shape
    from ..kernels.bench.workloads import workloads as workload_set

    names = tuple(n for n in (baselines or "").split(",") if n and n != "none")
    unknown = [n for n in names if n not in bench_baselines.BASELINES]
    if unknown:
        known = ", ".join(bench_baselines.BASELINES)
        raise ConfigError(f"unknown baselines {unknown}; baselines are {known}")
    try:
        chosen = [parse_shape(s) for s in shapes]
        if workloads or not shapes:
            sets = [n for n in (workloads or ",".join(WORKLOAD_SETS)).split(",") if n]
            chosen = workload_set(sets) + chosen
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not torch.cuda.is_available():
        raise EnvironmentFailure("bench needs a CUDA GPU; none is visible")
    cc = torch.cuda.get_device_capability()
    packs = [p for p in loader.discover_packs() if p.fits(cc)]
    if not packs:
        raise EnvironmentFailure("no kernel pack fits this GPU: run flashinfer-build build, or install one")
    variants = selected_variants(selection, built)
    arch = _arch(packs, {v.arch for v in variants})
    selected = {v.id for v in variants if v.arch == arch}
    rows = [w for w in chosen if w.group == "user" or w.variant(arch).id in selected]
    if not rows:
        raise ConfigError("no workload uses a selected variant; widen --only/--skip or pass --shape")
    built = {vid for p in packs if p.arch == arch for vid in p.variants}
    log.print("measuring the device's copy bandwidth and bf16 matmul rate ...")
    peaks = bench_timing.measure_peaks()
    log.print(bench_report.peaks_line({"device": peaks.to_dict()}))
    partial = lib.BenchReport(peaks, cuda_graph)

    def on_row(done: int, total: int, row) -> None:
        bar.update(task, completed=done, description=row.workload.name)
        partial.rows.append(row)
        if json_path:  # rows so far, so that a run cut short still leaves its numbers
            Path(json_path).write_text(json.dumps(partial.to_dict(), indent=1) + "\n")

    with progress_bar() as bar:
        task = bar.add_task("bench", total=len(rows))
        report = lib.bench(
            rows, peaks, arch=arch, built=built, baselines=names, graph=cuda_graph, seed=seed, on_row=on_row
        )
    data = report.to_dict()
    out.print(bench_report.table(data))
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=1) + "\n")
    if csv_path:
        Path(csv_path).write_text(bench_report.to_csv(data))
    if plot_path:
        bench_report.plot(data, plot_path)
    bad = [
        r["workload"]["name"]
        for r in data["rows"]
        for m in r["methods"]
        if m["name"] == "ours" and m["status"] in ("wrong", "error")
    ]
    if bad:
        raise VerifyFailed(f"our kernels failed on {len(bad)} workloads (first: {bad[0]}); see the report")


def _arch(packs, selected_archs: set[str]) -> str:
    """The pack arch to time: the loader's preferred one for this GPU among the selected archs."""
    from ..kernels.loader import ARCH_PREFERENCE

    for arch in ARCH_PREFERENCE:
        if arch in selected_archs and any(p.arch == arch for p in packs):
            return arch
    raise EnvironmentFailure(
        f"no pack of the selected archs ({', '.join(sorted(selected_archs))}) runs on this GPU; "
        f"packs found: {', '.join(sorted({p.arch for p in packs}))}"
    )
