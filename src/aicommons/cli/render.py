"""`aicommons render`: write every file the site's data plane runs on (atomically, unchanged skipped)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aicommons.cli.common import SiteFile, console, load
from aicommons.errors import AicError


def register(app: typer.Typer) -> None:
    app.command()(render)


class RenderUsageError(AicError):
    """Bad arguments to `aicommons render`."""


def _state_secrets(site_file: Path, site):
    """(held slots, secret lookup, the store) from the site's state (--state/$AICOMMONS_STATE as for
    every command), read only: render writes --out and nothing else (secrets not generated yet are
    throwaway values, said so)."""
    from aicommons.engine.api import key_source, open_state

    store = open_state(site_file, read_only=True)
    return store.held_slots(), store.secrets(key_source(site, store, site_file)), store


def render(
    file: Path = SiteFile,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created if missing).")] = Path("rendered"),
    user: Annotated[str | None, typer.Option("--user", help="Render only this user's files.")] = None,
) -> None:
    """Render Traefik, user bundles, shared-service configs, Authentik blueprints and the firewall."""
    from aicommons.engine.api import CERTS_META
    from aicommons.plan import certificates as certs_plan
    from aicommons.plan import resolve
    from aicommons.render import render_site, render_user
    from aicommons.render.write import write_tree

    site, index = load(file)
    held, secrets, store = _state_secrets(file, site)
    resolved = resolve(site, held=held, index=index, certificates=certs_plan.from_json(store.meta(CERTS_META)))
    if user is not None:
        if user not in {t.user for t in resolved.tenants}:
            raise RenderUsageError(f"--user {user}: no such user in {file} (users: "
                                   f"{', '.join(t.user for t in resolved.tenants[:5])}...)")
        files = render_user(resolved, user, secrets)
    else:
        files = render_site(resolved, secrets)
    # A full render owns these directories: a removed user's files must go (routes, blueprint).
    prune = () if user else ("traefik/dynamic", "services/authentik/blueprints")
    result = write_tree(files, out, prune=prune)
    store.close()
    console.print(f"{len(result.written)} written, {len(result.unchanged)} unchanged, "
                  f"{len(result.removed)} removed in {out}")
    for p in result.written[:20]:
        console.print(f"  {p}")
    if len(result.written) > 20:
        console.print(f"  ... and {len(result.written) - 20} more")
    if secrets.throwaway:
        console.print(f"[yellow]note:[/] {len(secrets.throwaway)} secrets do not exist yet (the site was never "
                      "applied): the files hold throwaway values; `aicommons apply` generates the real ones",
                      soft_wrap=True)
