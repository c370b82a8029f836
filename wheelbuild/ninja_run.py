"""Runs ninja on build.ninja and reads each finished edge from its output.

Off a terminal ninja prints `[done/total] DESCRIPTION` when an edge finishes, then the edge's output;
a failed edge adds `FAILED: ...` and the command line. The last line of every edge's output is unit.py's
marker, which carries the edge's label, result and time.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .unit import MARKER

_STATUS = re.compile(r"^\[\d+/\d+\] (CUDA|LINK) (\S+)$")
_FAILED = re.compile(r"^FAILED: ")


@dataclass(frozen=True)
class EdgeResult:
    label: str
    ok: bool
    seconds: float
    output: str  # the compiler's or linker's messages


def run_ninja(
    ninja: Path,
    ninja_file: Path,
    *,
    cwd: Path,
    targets: list[str],
    jobs: int,
    keep_going: bool,
    on_edge: Callable[[EdgeResult], None],
    on_message: Callable[[str], None],
) -> int:
    """Build `targets`; call `on_edge` as each edge finishes. Returns ninja's exit code."""
    cmd = [
        str(ninja),
        "-f",
        str(ninja_file.resolve()),
        "-j",
        str(jobs),
        "-k",
        "0" if keep_going else "1",
        *targets,
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env={**os.environ, "NINJA_STATUS": "[%f/%t] "},
    )
    block: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            is_status = bool(_STATUS.match(line))
            if is_status or line.startswith("ninja: "):
                _finish(block, on_edge)
                block = [line] if is_status else []
                if not is_status and "no work to do" not in line and "stopped" not in line:
                    on_message(line)
            else:
                block.append(line)
        _finish(block, on_edge)
    finally:
        rc = proc.wait()
    return rc


def _finish(block: list[str], on_edge: Callable[[EdgeResult], None]) -> None:
    if not block:
        return
    output: list[str] = []
    marker = None
    skip_command = False
    for line in block[1:]:
        if skip_command:  # the command line that ninja echoes after FAILED:
            skip_command = False
        elif _FAILED.match(line):
            skip_command = True
        elif line.startswith(MARKER + "\t"):
            marker = line.split("\t")
        else:
            output.append(line)
    if marker is not None:
        _, label, status, seconds = marker
        on_edge(EdgeResult(label, status == "ok", float(seconds), "\n".join(output).strip()))
