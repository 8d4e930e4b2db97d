"""The `aicommons` command: a thin shell over the services. Each area registers its commands."""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from aicommons.cli import apps, catalog, doctor, engine, gateway, ops, plan, portal, proxmox, render, site, users
from aicommons.cli.common import err_console
from aicommons.errors import AicError

app = typer.Typer(
    name="aicommons",
    help="Declare an AI workbench site in YAML, plan it, apply it to Proxmox VE or LXC, and run it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (site, plan, render, engine, users, ops, apps, catalog, proxmox, portal, doctor, gateway):
    module.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every AicError becomes a clean message and its exit code, never a traceback."""
    from aicommons.drivers.registry import allow_joining_site_networks

    allow_joining_site_networks()  # the command reaches an LXC site's addresses from inside its namespace
    if os.environ.get("AICOMMONS_FAKE_DIR"):
        err_console.print("[yellow]warning:[/] AICOMMONS_FAKE_DIR is ignored: this command always works on the real "
                          "site (the fake world exists only in the test suite)", soft_wrap=True)
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
    except OSError as exc:  # a full disk, an unwritable --out, a missing directory: say which and why
        import errno

        where = f"{exc.filename}: " if exc.filename else ""
        hint = (" (free space or fix the permissions and run again; files are written whole or not at all)"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                                 errno.EIO, errno.ENOTDIR, errno.EISDIR) else "")
        err_console.print(f"[red]error:[/] {escape(where)}{escape(exc.strerror or str(exc))}{hint}", soft_wrap=True)
        return 74  # EX_IOERR
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        import click
        from typer._click.exceptions import ClickException as TyperClickException  # typer's vendored click

        if isinstance(exc, (click.ClickException, TyperClickException)):  # typer raises the vendored one
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            err_console.print("aborted")
            return 1
        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if os.environ.get("AICOMMONS_DEBUG"):
            raise
        err_console.print(f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
                          "(AICOMMONS_DEBUG=1 shows the traceback)")
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())
