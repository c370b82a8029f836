"""The one console of the CLI: logs, progress and errors go to stderr; tables and JSON to stdout.

Off a terminal (pipes, CI logs) lines are not wrapped at rich's default 80 columns.
"""

from __future__ import annotations

import sys

from rich.console import Console

PIPE_WIDTH = 200


def _width(stream) -> int | None:
    return None if stream.isatty() else PIPE_WIDTH


# soft_wrap: messages (paths, pip commands) stay on one line, so they can be copied whole.
log = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))
out = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
