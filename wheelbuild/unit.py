"""Runs one build command for ninja: into a private temp dir, then an atomic rename onto its output.

    python -m flashinfer_build.wheelbuild.unit --label ID --out PATH -- nvcc ... -o @OUT@

`@OUT@` is replaced by a path with the output's file name inside a fresh temp dir next to the output.
The last line printed is a marker the build reads for the unit's result and time (MARKER below).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKER = "@@fib-unit"
OUT_PLACEHOLDER = "@OUT@"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=".tmp-"))
    tmp_out = tmp_dir / args.out.name
    signal.signal(signal.SIGTERM, _raise_interrupt)
    start = time.monotonic()
    rc = 130
    try:
        rc = subprocess.run([tmp_out.as_posix() if a == OUT_PLACEHOLDER else a for a in command]).returncode
        if rc == 0:
            os.replace(tmp_out, args.out)
    except KeyboardInterrupt:
        rc = 130
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        status = "ok" if rc == 0 else "failed"
        print(f"{MARKER}\t{args.label}\t{status}\t{time.monotonic() - start:.2f}", flush=True)
    return rc


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
