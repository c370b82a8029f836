"""`flashinfer-build wheel`."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.markup import escape

from ..wheelbuild import build as builder
from ..wheelbuild import toolchain
from ..wheelbuild.wheel import build_wheel
from .console import log
from .options import build_options, resolve_options
from .progress import RichReporter


@click.command("wheel")
@build_options
@click.option("--dist-dir", type=click.Path(file_okay=False), help="Where the wheels go (default: dist).")
def wheel(**cli_values) -> None:
    """Build the selected variants (incrementally) and package one wheel per arch."""
    options = resolve_options(**cli_values)
    tc = toolchain.discover(os.environ)
    result = builder.build(options, tc, RichReporter(log))
    for arch in options.archs:
        if arch not in result.packs:
            log.print(f"[yellow]no {arch} pack: none of its selected variants has a template yet[/]")
            continue
        path = build_wheel(result.packs[arch], Path(options.dist_dir), env=os.environ)
        log.print(f"[green]wheel[/] {escape(str(path))}  [dim]{path.stat().st_size / 1e6:.1f} MB[/]")
