"""The one console of the CLI: logs, progress and errors go to stderr; tables and JSON to stdout."""

from __future__ import annotations

from rich.console import Console

log = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)
