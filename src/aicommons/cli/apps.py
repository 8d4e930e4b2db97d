"""`aicommons apps build`: prebuild the shared app layers (the LXC driver builds them on demand too)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aicommons.cli.common import console, err_console
from aicommons.errors import AicError

apps_app = typer.Typer(help="The apps' shared, versioned layers (native runtime).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(apps_app, name="apps")


@apps_app.command("build")
def build(
    app_name: Annotated[list[str] | None, typer.Option("--app", help="Only this app (repeatable).")] = None,
    cache_dir: Annotated[Path, typer.Option(help="Where layers live (the lxc driver's cache_dir).")] = Path(
        "/var/cache/aicommons"),
) -> None:
    """Build each app's layer (and the Node layer the npm apps use) once; print where each is."""
    from aicommons.catalog import load_catalog
    from aicommons.drivers import applayers

    apps = load_catalog().apps
    unknown = [n for n in app_name or [] if n not in apps]
    if unknown:
        raise AicError(f"--app: {', '.join(unknown)} is not a catalog app; choose from {', '.join(sorted(apps))}")
    failed = []
    for name in app_name or sorted(apps):
        app = apps[name]
        if app.native is None or app.native.source == "none":
            reason = app.native.unavailable if app.native else "no native recipe"
            console.print(f"{name}: not available natively ({reason})")
            continue
        try:
            path = applayers.ensure_layer(app, cache_dir, log=lambda m: err_console.print(m, highlight=False))
        except AicError as exc:
            failed.append(name)
            err_console.print(f"[red]{name}:[/] {exc}", highlight=False)
            continue
        console.print(f"{name}: {path}", highlight=False)
    if failed:
        raise AicError(f"layers that did not build: {', '.join(failed)}")
