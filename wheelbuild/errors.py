"""Errors that end a command, one class per exit code; the message tells the user what to do.

cli/main.py maps them to exit codes and nothing else. Other modules (verify, bench) subclass
FlashinferBuildError with their own exit_code.
"""

from __future__ import annotations


class FlashinferBuildError(Exception):
    exit_code = 1


class ConfigError(FlashinferBuildError):
    """Bad options, an unreadable matrix, or a selection that matches nothing."""

    exit_code = 2


class ToolchainError(FlashinferBuildError):
    """nvcc, the CUDA headers, CUTLASS, ninja or a host compiler is missing or unusable."""

    exit_code = 3


class CompileError(FlashinferBuildError):
    """One or more units failed to compile or link; `failures` maps variant id (or library) to message."""

    exit_code = 4

    def __init__(self, failures: dict[str, str]):
        self.failures = dict(failures)
        lines = [f"{len(failures)} unit(s) failed to build:"]
        for unit, message in failures.items():
            lines.append(f"--- {unit}")
            lines.append(message.rstrip() or "(no compiler output)")
        super().__init__("\n".join(lines))


class PackageError(FlashinferBuildError):
    """A wheel could not be assembled, or a built pack/wheel fails its checks."""

    exit_code = 5
