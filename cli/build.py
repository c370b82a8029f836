"""`flashinfer-build build`."""

from __future__ import annotations

import os
import time

import click
from rich.markup import escape

from ..wheelbuild import build as builder
from ..wheelbuild import toolchain
from .console import log
from .options import build_options, resolve_options
from .progress import RichReporter


@click.command("build")
@build_options
@click.option("--dry-run", is_flag=True, default=None, help="Print what would be compiled; compile nothing.")
def build(**cli_values) -> None:
    """Compile the selected variants into one kernel pack per arch under the build directory."""
    options = resolve_options(**cli_values)
    start = time.monotonic()
    tc = toolchain.discover(os.environ)
    result = builder.build(options, tc, RichReporter(log))
    if options.dry_run:
        return
    for arch, pack in sorted(result.packs.items()):
        log.print(f"[green]pack[/] {arch}: {escape(str(pack))}")
    log.print(f"done in {time.monotonic() - start:.1f} s")
