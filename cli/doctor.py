"""`flashinfer-build doctor`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..wheelbuild import doctor as checks
from .console import out

PARTS = ("nvcc", "cutlass", "ninja", "host_compiler")


@click.command("doctor")
@click.option("--build-dir", type=click.Path(file_okay=False), default="build", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(build_dir: str, as_json: bool) -> None:
    """Show the build toolchain, the GPU, and which kernel packs are installed and fit it."""
    report = {"toolchain": checks.toolchain_report(os.environ), "gpu": checks.gpu_report()}
    report["packs"] = checks.packs_report(report["gpu"], Path(build_dir))
    if as_json:
        out.print_json(json.dumps(report))
        return
    for part in PARTS:
        info = report["toolchain"][part]
        if "error" in info:
            out.print(f"[red]✗[/] {part:<14} {escape(info['error'])}")
            continue
        where = info.get("path") or info.get("include")
        extra = f" ({info['from']})" if "from" in info else ""
        out.print(f"[green]✓[/] {part:<14} {escape(info['version'])}  {escape(where)}[dim]{escape(extra)}[/]")
    gpu = report["gpu"]
    if gpu["present"]:
        cc = ".".join(map(str, gpu["capability"]))
        out.print(
            f"[green]✓[/] gpu            {gpu['name']} (compute capability {cc}), driver CUDA "
            f"{gpu['driver_cuda']}, torch {gpu['torch']} (CUDA {gpu['torch_cuda']})"
        )
    else:
        out.print(f"[yellow]-[/] gpu            none: {gpu['reason']}")
    if not report["packs"]:
        out.print("[yellow]-[/] kernel packs   none installed or built")
        return
    table = Table(title="kernel packs", title_justify="left")
    for column in ("origin", "arch", "variants", "min driver", "fits this GPU", "path"):
        table.add_column(column, no_wrap=column != "path")
    for p in report["packs"]:
        fits = "-" if "fits" not in p else ("[green]yes[/]" if p["fits"] else f"[red]no[/]: {p['why']}")
        table.add_row(p["origin"], p["arch"], str(p["variants"]), str(p["min_driver_cuda"]), fits, p["path"])
    out.print(table)
