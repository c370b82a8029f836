"""Draws a build with rich: a progress bar over the units to compile, one line per finished unit."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ..wheelbuild.build import BuildPlan, Reporter


class RichReporter(Reporter):
    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None

    def planned(self, plan: BuildPlan) -> None:
        to_compile = plan.to_compile
        cached = len(plan.units) - len(to_compile)
        for family, ids in plan.no_template.items():
            self.console.print(
                f"[yellow]skipped[/] {len(ids)} {family} variant(s): no template "
                f"kernels/csrc/instantiate/{family}.cu.in yet"
            )
        self.console.print(
            f"{len(plan.units)} unit(s) for {', '.join(plan.options.archs)}: "
            f"{len(to_compile)} to compile, {cached} cached "
            f"(toolchain: nvcc {plan.toolchain.nvcc_version}, CUTLASS {plan.toolchain.cutlass_version})"
        )
        if plan.options.dry_run:
            for unit in to_compile:
                self.console.print(f"  would compile {unit.id}")
                self.console.print(f"    [dim]{escape(' '.join(plan.compile_command(unit)))}[/]")
            for unit in plan.units:
                if unit.cached:
                    self.console.print(f"  cached        {unit.id}")
            return
        if to_compile:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]compiling"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
                disable=not self.console.is_terminal,  # logs and pipes get the per-unit lines only
            )
            self.task = self.progress.add_task("compile", total=len(to_compile))
            self.progress.start()

    def unit_finished(self, label: str, ok: bool, seconds: float, output: str) -> None:
        is_link = label.startswith("sm") and "_" not in label
        mark = "[green]✓[/]" if ok else "[bold red]✗[/]"
        what = f"linked {label}" if is_link else label
        self.console.print(f"{mark} {escape(what)}  [dim]{seconds:.1f} s[/]")
        if not ok:
            self.console.print(escape(output))
        elif output:
            self.console.print(f"[dim]{escape(output)}[/]")
        if self.progress is not None and not is_link:
            self.progress.advance(self.task)
            if self.progress.finished:
                self.progress.stop()
                self.progress = None

    def message(self, text: str) -> None:
        self.console.print(escape(text))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
