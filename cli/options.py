"""Click options shared by the commands that select and build variants."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..wheelbuild.errors import ConfigError
from ..wheelbuild.options import BuildOptions, resolve

PYPROJECT = Path("pyproject.toml")


def selection_options(f):
    """--preset/--matrix, --only, --skip, --arch."""
    f = click.option("--arch", "archs", help="Comma-separated archs: sm90a, sm80 (default: both).")(f)
    f = click.option("--skip", multiple=True, help="Glob on variant ids to leave out (repeatable).")(f)
    f = click.option("--only", multiple=True, help="Glob on variant ids to keep (repeatable).")(f)
    f = click.option("--matrix", type=click.Path(dir_okay=False), help="A matrix TOML file of your own.")(f)
    f = click.option("--preset", help="Preset matrix: ci, default (the default), full.")(f)
    return f


def built_option(f):
    """--built (verify, bench): select from what the kernel packs hold instead of a preset."""
    return click.option(
        "--built",
        is_flag=True,
        help="Select the variants the kernel packs found here hold (FLASHINFER_BUILD_PACK, installed "
        "wheels, ./build) instead of a preset; --only, --skip and --arch still filter.",
    )(f)


def build_options(f):
    """Selection plus the options of a build."""
    f = selection_options(f)
    f = click.option(
        "--lineinfo",
        is_flag=True,
        default=None,
        help="Device line info for profilers (builds are then not byte-reproducible).",
    )(f)
    f = click.option(
        "--sm90-prefill-mainloop/--no-sm90-prefill-mainloop",
        default=None,
        help="sm90a prefill variants with the wgmma mainloop (the default) or with the sm80 one "
        "(docs/HOPPER_MAINLOOP.md).",
    )(f)
    f = click.option(
        "--keep-going", is_flag=True, default=None, help="Build the other units when one fails."
    )(f)
    f = click.option("--cache-dir", type=click.Path(file_okay=False), help="Object cache directory.")(f)
    f = click.option(
        "--build-dir", type=click.Path(file_okay=False), help="Build directory (default: build)."
    )(f)
    f = click.option("-j", "--jobs", type=int, help="Parallel compile jobs (default: CPU cores).")(f)
    return f


def resolve_options(**cli_values) -> BuildOptions:
    """BuildOptions from click's values, os.environ and ./pyproject.toml."""
    preset, matrix = cli_values.pop("preset", None), cli_values.pop("matrix", None)
    if preset and matrix:
        raise ConfigError("give --preset or --matrix, not both")
    cli_values["matrix"] = preset or matrix
    for name in ("only", "skip"):
        values = cli_values.get(name)
        if values:
            cli_values[name] = ",".join(values)
    return resolve(cli_values, os.environ, PYPROJECT)
