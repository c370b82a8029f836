"""`flashinfer-build list`."""

from __future__ import annotations

import json
import os

import click
from rich.markup import escape
from rich.table import Table

from ..wheelbuild import status as st
from ..wheelbuild import toolchain
from ..wheelbuild.errors import ToolchainError
from .console import log, out
from .options import resolve_options, selection_options

_STYLE = {"built": "green", "installed": "cyan", "cached": "blue", "missing": "dim"}


@click.command("list")
@selection_options
@click.option("--build-dir", type=click.Path(file_okay=False), help="Build directory (default: build).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Object cache directory.")
@click.option("--installed", is_flag=True, help="List what the installed kernel wheels provide instead.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in README.md).")
def listing(installed: bool, as_json: bool, **cli_values) -> None:
    """Show the selected variant matrix and whether each variant is built, cached, installed or missing."""
    if installed:
        _list_installed(as_json)
        return
    options = resolve_options(**cli_values)
    try:
        tc = toolchain.discover(os.environ)
    except ToolchainError as e:
        tc = None
        if not as_json:
            log.print(f"[yellow]no toolchain, cache status unknown:[/] {escape(str(e))}")
    matrix, statuses = st.variant_statuses(options, tc)
    if as_json:
        out.print_json(json.dumps(st.listing(options, matrix, statuses)))
        return
    table = Table(title=f"{options.matrix}: {len(statuses)} variants", title_justify="left")
    table.add_column("id", no_wrap=True)
    for column in ("family", "arch", "q/kv dtype", "status"):
        table.add_column(column, no_wrap=True)
    for s in statuses:
        v = s.variant
        table.add_row(
            v.id, v.family, v.arch, f"{v.q_dtype}/{v.kv_dtype}", f"[{_STYLE[s.status]}]{s.status}[/]"
        )
    out.print(table)
    counts = st.listing(options, matrix, statuses)["counts"]
    out.print(", ".join(f"{counts[k]} {k}" for k in st.STATUSES) + f" (of {counts['total']})")
    for reason, n in sorted(matrix.pruned.items()):
        out.print(f"[dim]pruned {n} combination(s): {reason}[/]")


def _list_installed(as_json: bool) -> None:
    packs = st.installed_packs()
    if as_json:
        out.print_json(json.dumps(st.installed_listing(packs)))
        return
    if not packs:
        out.print(
            "no kernel wheels installed (pip install flashinfer-build-kernels-<arch>, or build them with "
            "`flashinfer-build wheel`)"
        )
        return
    table = Table(title="installed kernel packs", title_justify="left")
    for column in ("id", "family", "arch", "pack"):
        table.add_column(column, no_wrap=True)
    for pack in packs:
        for variant_id in pack.variants:
            table.add_row(variant_id, variant_id.split("_")[0], pack.arch, str(pack.path))
    out.print(table)
    out.print(f"{sum(len(p.variants) for p in packs)} variant(s) in {len(packs)} pack(s)")
