"""`aicommons apps build`: prebuild the shared app layers and the model server's layers (llama-server
and the default site's model files); the LXC driver builds them on demand too."""

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
    """Build each app's layer (and the Node layer the npm apps use) once, and llama-server's layer
    with the default site's models (`--app llama-server`); print where each is."""
    from aicommons.catalog import load_catalog
    from aicommons.drivers import applayers

    apps = load_catalog().apps
    unknown = [n for n in app_name or [] if n not in apps and n != MODEL_SERVER]
    if unknown:
        raise AicError(f"--app: {', '.join(unknown)} is not a catalog app; choose from "
                       f"{', '.join(sorted([*apps, MODEL_SERVER]))}")
    failed = []
    if not app_name or MODEL_SERVER in app_name:
        failed += _build_model_server(cache_dir)
    for name in [n for n in app_name or sorted(apps) if n != MODEL_SERVER]:
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


MODEL_SERVER = "llama-server"


def _build_model_server(cache_dir: Path) -> list[str]:
    """llama-server's layer (compiled, ~8.5 min on 2 cores the first time) and the default models'."""
    from aicommons.drivers import modellayers
    from aicommons.spec.served import DEFAULT_LXC_MODELS

    log = lambda m: err_console.print(m, highlight=False)  # noqa: E731
    try:
        console.print(f"{MODEL_SERVER}: {modellayers.ensure_server_layer(cache_dir, log)}", highlight=False)
        for m in DEFAULT_LXC_MODELS:
            console.print(f"model {m.name}: {modellayers.ensure_model_layer(m, cache_dir, log)}", highlight=False)
    except AicError as exc:
        err_console.print(f"[red]{MODEL_SERVER}:[/] {exc}", highlight=False)
        return [MODEL_SERVER]
    return []
