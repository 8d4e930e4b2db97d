"""The `aicommons` command: a thin shell over the services. Each area registers its commands."""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from aicommons.cli import apps, engine, ops, plan, render, site, users
from aicommons.cli.common import err_console
from aicommons.errors import AicError

app = typer.Typer(
    name="aicommons",
    help="Declare an AI workbench site in YAML, plan it, apply it to Proxmox VE or LXC, and run it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (site, plan, render, engine, users, ops, apps):
    module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every AicError becomes a clean message and its exit code, never a traceback."""
    try:
        app(args=argv, standalone_mode=False)
    except AicError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except SystemExit as exc:  # typer.Exit inside commands
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        import click

        kinds = [click.exceptions]
        try:  # recent typer raises the exceptions of its own vendored click
            from typer._click import exceptions as typer_click

            kinds.append(typer_click)
        except ImportError:
            pass
        if any(isinstance(exc, getattr(k, "ClickException", ())) for k in kinds):
            exc.show()
            return exc.exit_code
        if any(isinstance(exc, getattr(k, "Abort", ())) for k in kinds):
            err_console.print("aborted")
            return 1
        if any(isinstance(exc, getattr(k, "Exit", ())) for k in kinds):
            return exc.exit_code
        if os.environ.get("AICOMMONS_DEBUG"):
            raise
        err_console.print(f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
                          "(AICOMMONS_DEBUG=1 shows the traceback)")
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
