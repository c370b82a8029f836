"""`flashinfer-build verify`: the selected variants against the reference (library: kernels/verify/)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..variants import AXES, Variant
from ..wheelbuild.errors import ConfigError, FlashinferBuildError
from .console import log, out
from .options import built_option, resolve_options, selection_options


class VerifyFailed(FlashinferBuildError):
    """Some variant computed a wrong result (or the sanitizer found errors)."""

    exit_code = 1


class EnvironmentFailure(FlashinferBuildError):
    """No GPU, no kernel pack, a pack for another GPU, or selected variants that were never built."""

    exit_code = 2


def selected_variants(selection: dict, built: bool = False) -> list[Variant]:
    """The variants --preset/--matrix/--only/--skip/--arch select (as `list` and `build` read them), or
    with `built` (--built) the variants of the kernel packs found here that --only/--skip/--arch keep."""
    from ..wheelbuild.build import select_matrix

    if built:
        return _built_variants(selection)
    options = resolve_options(**selection)
    variants = list(select_matrix(options))
    if not variants:
        raise ConfigError("the selection matches no variant; check --preset/--matrix, --only, --skip, --arch")
    return variants


def _built_variants(selection: dict) -> list[Variant]:
    from ..kernels import loader
    from ..variants import Matrix, parse_id, select

    if selection.get("preset") or selection.get("matrix"):
        raise ConfigError("--built selects from the kernel packs: give no --preset or --matrix with it")
    options = resolve_options(**selection)
    try:
        packs = loader.discover_packs()
    except loader.PackError as e:
        raise EnvironmentFailure(str(e)) from None
    ids = dict.fromkeys(vid for pack in packs for vid in pack.variants)
    try:
        held = Matrix(tuple(parse_id(vid) for vid in ids))
        variants = list(select(held, only=options.only, skip=options.skip, archs=options.archs))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not variants:
        found = ", ".join(f"{p.arch} ({len(p.variants)} variants, {p.path})" for p in packs) or "none"
        raise EnvironmentFailure(
            "--built: no variant of the kernel packs found matches --only/--skip/--arch. "
            f"Packs found: {found}"
        )
    return variants


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=log,
        transient=True,
        disable=not log.is_terminal,  # logs and CI get the table only
    )


def _arch_twins_once(variants: list[Variant]) -> list[Variant]:
    """The CPU emulation does not depend on the arch: keep one variant of each set of arch twins."""
    seen, kept = set(), []
    for v in variants:
        key = dataclasses.replace(v, arch=AXES["arch"][0])
        if key not in seen:
            seen.add(key)
            kept.append(v)
    return kept


@click.command("verify")
@selection_options
@built_option
@click.option(
    "--device",
    type=click.Choice(["cuda", "cpu"]),
    default="cuda",
    show_default=True,
    help="cuda: run the kernels through the wrappers; cpu: check the scheduler's plans through "
    "its CPU emulation (no GPU needed).",
)
@click.option(
    "--cases", type=click.IntRange(min=1), default=4, show_default=True, help="Random cases per variant."
)
@click.option(
    "--seed", type=click.IntRange(min=0), help="Replay the cases of an earlier run (its seed is printed)."
)
@click.option(
    "--factor",
    type=click.FloatRange(min=1.0),
    default=3.0,
    show_default=True,
    help="Allowed multiple of PyTorch's own low-precision error.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full report here.")
@click.option(
    "--sanitize",
    is_flag=True,
    help="Also run one small case per kernel template under compute-sanitizer (memcheck, racecheck).",
)
def verify(device, cases, seed, factor, json_path, sanitize, built, **selection) -> None:
    """Check the selected variants against the float64 PyTorch reference on random cases.

    Exit code 0 when every variant passes, 1 when any fails, 2 when this machine cannot run the check
    (no GPU, no fitting pack, selected variants not built)."""
    from ..kernels import verify as lib
    from ..kernels.verify.env import EnvironmentProblem, runnable_on_gpu

    if sanitize and device == "cpu":
        raise ConfigError("--sanitize runs kernels: it needs --device cuda")
    variants = selected_variants(selection, built)
    seed = lib.new_seed() if seed is None else seed
    if device == "cpu":
        variants, gpu, packs, skipped = _arch_twins_once(variants), None, [], {}
    else:
        try:
            env = runnable_on_gpu(variants, archs_requested=bool(selection.get("archs")))
        except EnvironmentProblem as e:
            raise EnvironmentFailure(str(e)) from None
        variants, gpu, packs, skipped = env.variants, env.gpu, env.packs, env.skipped
    where = gpu or "the CPU (scheduler emulation)"
    log.print(
        f"verify: {len(variants)} variants x {cases} cases on {where}; "
        f"seed {seed} (reproduce with --seed {seed})"
    )
    for vid, reason in skipped.items():
        log.print(f"[dim]skipped {vid}: {reason}[/]")
    with progress_bar() as bar:
        task = bar.add_task("verify", total=len(variants) * cases)
        report = lib.verify(
            variants,
            device=device,
            seed=seed,
            cases=cases,
            factor=factor,
            on_progress=lambda vid, done, n: bar.update(task, advance=1, description=vid),
        )
    report.gpu, report.packs = gpu, packs
    if sanitize:
        from ..kernels.verify.sanitize import sanitize as run_sanitizer

        log.print("compute-sanitizer: memcheck and racecheck on one small case per kernel template")
        report.sanitize = run_sanitizer(variants, seed=seed)
    data = report.to_dict()
    out.print(results_table(data))
    if data["sanitize"] is not None:
        out.print(sanitize_table(data["sanitize"]))
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=1) + "\n")
        log.print(f"report written to {json_path}")
    summary = data["summary"]
    if not report.passed:
        bad = [v["id"] for v in data["variants"] if v["result"] != "pass"]
        raise VerifyFailed(
            f"{len(bad)} of {summary['variants']} variants failed"
            + (f" (first: {bad[0]})" if bad else ", sanitizer findings above")
            + f"; reproduce with --seed {seed}"
            + (f" --only {bad[0]}" if bad else "")
        )
    out.print(f"[green]all {summary['variants']} variants passed[/] ({summary['cases']} cases, seed {seed})")


def results_table(data: dict) -> Table:
    where = data["gpu"] or "CPU emulation"
    title = f"verify on {where}, seed {data['seed']}, tolerance factor {data['factor']:g}"
    t = Table(title=title, title_justify="left")
    t.add_column("variant", no_wrap=True)
    for col in ("cases", "max abs err", "max rel err", "tolerance"):
        t.add_column(col, justify="right")
    t.add_column("result")
    style = {"pass": "green", "fail": "red", "error": "red"}
    for v in data["variants"]:
        numbers = [_num(v["max_abs_err"]), _num(v["max_rel_err"]), _num(v["tolerance"])]
        result = f"[{style[v['result']]}]{v['result']}[/]" + (f" {v['message']}" if v["message"] else "")
        t.add_row(v["id"], str(v["cases"]), *numbers, result)
    return t


def sanitize_table(findings: list[dict]) -> Table:
    t = Table(title="compute-sanitizer", title_justify="left")
    for col in ("tool", "variant", "errors", "note"):
        t.add_column(col)
    for f in findings:
        errors = f["errors"]
        shown = "[green]0[/]" if errors == 0 else f"[red]{errors if errors >= 0 else 'crashed'}[/]"
        clean = errors == 0 and f["exit_code"] is not None
        note = "" if clean or not f["log"] else f["log"].splitlines()[-1]
        t.add_row(f["tool"], f["variant"], shown, note)
    return t


def _num(x) -> str:
    return "" if x is None else f"{x:.2e}"
