"""verify --sanitize: a few small verify cases under NVIDIA compute-sanitizer (memcheck, racecheck).

Each tool runs a child Python process (`python -m flashinfer_build.kernels.verify.sanitize IDS...`) that
verifies one small case per variant; only our kernels are instrumented (kernel names containing "fib"), and
PyTorch's caching allocator is switched off in the child so that an out-of-bounds access lands outside
its allocation instead of inside a cached block, where memcheck cannot see it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from ...variants import Variant, parse_id

TOOLS = ("memcheck", "racecheck")
ERROR_EXIT = 86
_SUMMARY = {
    "memcheck": re.compile(r"ERROR SUMMARY: (\d+) error"),
    "racecheck": re.compile(r"RACECHECK SUMMARY: (\d+) hazard"),
}
LOG_LINES = 40


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidate = os.path.join(cuda_home, "bin", "compute-sanitizer")
    return candidate if os.access(candidate, os.X_OK) else None


def subset(variants: list[Variant]) -> list[Variant]:
    """The first variant of each (family, arch): every kernel template once, cheap enough to sanitize."""
    chosen: dict[tuple[str, str], Variant] = {}
    for v in variants:
        chosen.setdefault((v.family, v.arch), v)
    return list(chosen.values())


def sanitize(variants: list[Variant], *, seed: int, tools=TOOLS, timeout: float = 600) -> list[dict]:
    """One finding per (tool, variant): {"tool", "variant", "errors", "exit_code", "log"}; errors is the
    sanitizer's count (memcheck errors, racecheck hazards), or -1 when the child died without a summary."""
    sanitizer = find_sanitizer()
    if sanitizer is None:
        return [
            {
                "tool": t,
                "variant": "",
                "errors": 0,
                "exit_code": None,
                "log": "compute-sanitizer not found (install the CUDA toolkit); nothing was checked",
            }
            for t in tools
        ]
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    findings = []
    for tool in tools:
        for v in subset(variants):
            cmd = [
                sanitizer,
                "--tool",
                tool,
                "--kernel-name",
                "kns=fib",
                "--error-exitcode",
                str(ERROR_EXIT),
                "--print-limit",
                "20",
                sys.executable,
                "-m",
                __name__,
                "--seed",
                str(seed),
                v.id,
            ]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
                output, code = done.stdout + done.stderr, done.returncode
            except subprocess.TimeoutExpired as e:
                output, code = f"timed out after {timeout:.0f} s\n{e.stdout or ''}", None
            findings.append(
                {
                    "tool": tool,
                    "variant": v.id,
                    "errors": _count(tool, output, code),
                    "exit_code": code,
                    "log": _tail(output),
                }
            )
    return findings


def _count(tool: str, output: str, code: int | None) -> int:
    match = _SUMMARY[tool].search(output)
    if match:
        return int(match.group(1))
    return -1 if code else 0


def _tail(output: str) -> str:
    return "\n".join(output.strip().splitlines()[-LOG_LINES:])


def _child(argv: list[str]) -> int:
    """Verify one small case of each variant id given; exit 1 when one fails (compute-sanitizer reports
    its own findings)."""
    from . import verify
    from .cases import Limits

    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    ids = [a for i, a in enumerate(argv) if not a.startswith("--") and (i == 0 or argv[i - 1] != "--seed")]
    report = verify([parse_id(i) for i in ids], seed=seed, cases=1, limits=Limits(3, 200, 40))
    for v in report.variants:
        print(f"{v.id}: {v.result} {v.message}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
