"""The `flashinfer-build` command group and `main()`, which only maps errors to exit codes.

Commands are modules of this package, imported when their command runs (so `build` never pays for
torch). To add one, write `cli/<name>.py` defining a click command in a module-level attribute named
like the module, and add the name to COMMANDS. Modules named there that do not exist yet are left out
of the group.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click
from rich.markup import escape

from ..wheelbuild.errors import FlashinferBuildError
from .console import log

# command name -> module in this package; the module's attribute of the same name is the command.
COMMANDS = {
    "list": "listing",
    "build": "build",
    "wheel": "wheel",
    "doctor": "doctor",
    "verify": "verify",
    "bench": "bench",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [
            name for name, module in COMMANDS.items() if importlib.util.find_spec(f"{__package__}.{module}")
        ]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module_name = COMMANDS.get(name)
        if module_name is None or not importlib.util.find_spec(f"{__package__}.{module_name}"):
            return None
        module = importlib.import_module(f"{__package__}.{module_name}")
        return getattr(module, module_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flashinfer-build")
def cli() -> None:
    """Build, package, verify and benchmark ahead-of-time attention kernels."""


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="flashinfer-build", standalone_mode=False)
    except FlashinferBuildError as e:
        log.print(f"[bold red]error:[/] {escape(str(e))}")
        return e.exit_code
    except click.exceptions.Abort:
        log.print("[red]interrupted[/]")
        return 130
    except KeyboardInterrupt:
        log.print("[red]interrupted[/]")
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
