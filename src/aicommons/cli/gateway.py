"""`gateway serve` (the model gateway), `users budget` and `users usage`: thin shells over aicommons.gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from aicommons.cli.common import SiteFile, console, load

gateway_app = typer.Typer(help="The model gateway: per-person keys, budgets and usage.", no_args_is_help=True)
StateOpt = typer.Option("--state", help="State file or postgresql:// URL.")
DbOpt = typer.Option("--database", help="The gateway's database (libpq URL); default: $AICOMMONS_GATEWAY_DATABASE, "
                                        "else the site's PostgreSQL.")


def register(app: typer.Typer) -> None:
    app.add_typer(gateway_app, name="gateway")
    from aicommons.cli.users import users_app

    users_app.command("budget")(budget)
    users_app.command("usage")(usage)


def _conninfo(file: Path, state: str | None, database: str | None) -> str:
    """--database, else $AICOMMONS_GATEWAY_DATABASE (the gateway's own login in its container: no
    state or secrets key needed there), else the site's PostgreSQL through the state's admin login."""
    import os

    from aicommons.drivers.registry import enter_site_network, site_owner
    from aicommons.gateway.site import DATABASE_ENV, conninfo_for

    given = database or os.environ.get(DATABASE_ENV)
    if given:
        return given
    site, _ = load(file)
    # The site's own PostgreSQL: on LXC reachable only in the site's namespace (as for `status`)
    enter_site_network(site, site_owner(file))
    return conninfo_for(file, state)


@gateway_app.command("serve")
def serve(file: Path = SiteFile,
          listen: Annotated[list[str] | None, typer.Option("--listen", help="HOST:PORT to serve on (repeatable).")] = None,
          database: Annotated[str | None, DbOpt] = None, state: Annotated[str | None, StateOpt] = None,
          pool: Annotated[int, typer.Option(min=1, max=200, help="Database connections.")] = 10) -> None:
    """Serve the OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models) and /metrics."""
    import logging

    import uvicorn

    from aicommons.cli.portal import _socket
    from aicommons.gateway.app import create_app
    from aicommons.gateway.config import GatewayConfig
    from aicommons.plan import resolve
    from aicommons.plan.models import gateway_routes

    site, _ = load(file)
    routes = gateway_routes(resolve(site))  # the model server's address needs no state (a fixed octet)
    if not routes:
        console.print("no models: gateway.upstreams is empty and the site serves no model file; "
                      "/v1/models lists nothing until a model server is named")
    import re

    cfg = GatewayConfig.from_spec(site.gateway, _conninfo(file, state, database), routes=routes, pool_size=pool,
                                  cors_origin_regex=rf"https://([a-z0-9-]+\.)*{re.escape(site.domain)}")
    socks = [_socket(x) for x in (listen or ["127.0.0.1:4000"])]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console.print(f"model gateway of {site.name} on " + ", ".join(listen or ["127.0.0.1:4000"])
                  + f"; models: {', '.join(sorted(cfg.routes)) or 'none'}")
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), proxy_headers=False, log_level="warning",
                                           access_log=False, server_header=False))
    server.run(sockets=socks)


def budget(name: Annotated[str, typer.Argument(help="The person.")],
           period: Annotated[str, typer.Option(help="day, week or month.")] = "month",
           tokens: Annotated[int | None, typer.Option("--tokens", min=0, help="Tokens per period (unset: no token limit).")] = None,
           cost: Annotated[float | None, typer.Option("--cost", min=0, help="Cost per period (unset: no cost limit).")] = None,
           default: Annotated[bool, typer.Option("--default", help="Back to the site's default budget.")] = False,
           file: Path = SiteFile, state: Annotated[str | None, StateOpt] = None,
           database: Annotated[str | None, DbOpt] = None) -> None:
    """Set a person's model budget; the gateway applies it from the next request (no restart)."""
    from aicommons.gateway.usage import clear_budget, set_budget
    from aicommons.ops.users import require_user

    require_user(file, name)
    conninfo = _conninfo(file, state, database)
    if default:
        clear_budget(conninfo, name)
        console.print(f"{name} is on the site's default budget")
        return
    b = set_budget(conninfo, name, period=period, tokens=tokens, cost=cost)
    parts = [f"{b.tokens:,} tokens" if b.tokens is not None else "", f"{b.cost} cost" if b.cost is not None else ""]
    console.print(f"{name}: {' and '.join(p for p in parts if p) or 'no limit'} per {b.period}")


def usage(name: Annotated[str, typer.Argument(help="The person.")],
          as_json: Annotated[bool, typer.Option("--json")] = False,
          file: Path = SiteFile, state: Annotated[str | None, StateOpt] = None,
          database: Annotated[str | None, DbOpt] = None) -> None:
    """A person's model usage against their budget in the current window."""
    from aicommons.gateway.config import utc_now
    from aicommons.gateway.usage import standing
    from aicommons.ops.users import require_user

    require_user(file, name)
    site, _ = load(file)
    s = standing(_conninfo(file, state, database), name, site.gateway.budget, utc_now())
    if as_json:
        typer.echo(json.dumps(s.to_dict(), indent=2))
        return
    limit = "no limit" if s.tokens_limit is None else f"{s.tokens_limit:,}"
    console.print(f"{name}: {s.tokens_used:,} tokens used ({s.tokens_reserved:,} in flight) of {limit} this "
                  f"{s.period}; resets {s.resets_at}")
    for r in s.by_model_app:
        console.print(f"  {r['model']} / {r['app']}: {r['requests']} requests, {r['prompt_tokens']:,} prompt + "
                      f"{r['completion_tokens']:,} completion tokens, cost {r['cost']:.4f}")
