"""`aicommons apps build`: prebuild the shared app layers and the model server's layers (llama-server
and the default site's model files); the LXC driver builds them on demand too."""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    parallel: Annotated[int, typer.Option(help="Layers built at once.")] = 2,
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
    log = lambda m: err_console.print(m, highlight=False)  # noqa: E731

    def build_app(name: str) -> str | None:
        app = apps[name]
        if app.native is None or app.native.source == "none":
            reason = app.native.unavailable if app.native else "no native recipe"
            console.print(f"{name}: not available natively ({reason})")
            return None
        try:
            path = applayers.ensure_layer(app, cache_dir, log=log)
        except AicError as exc:
            err_console.print(f"[red]{name}:[/] {exc}", highlight=False)
            return name
        console.print(f"{name}: {path}", highlight=False)
        return None

    jobs: list[Callable[[], list[str] | str | None]] = []
    if not app_name or MODEL_SERVER in app_name:
        jobs.append(lambda: _build_model_server(cache_dir))
    jobs += [functools.partial(build_app, n) for n in app_name or sorted(apps) if n != MODEL_SERVER]
    # Builds run `parallel` at a time: an npm or pip install waits on the registry much of the time,
    # so two overlap well on 2 cores (a cold CI builds every layer). Each layer has its own lock.
    failed: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for got in pool.map(lambda job: job(), jobs):
            failed += [got] if isinstance(got, str) else (got or [])
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
