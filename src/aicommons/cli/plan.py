"""`aicommons plan`: the resolved site (and, with state, the diff against reality)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aicommons.cli.common import SiteFile, console, load_resolved
from aicommons.plan.model import SEED_FIGURES, ResolvedSite


def register(app: typer.Typer) -> None:
    app.command()(plan)


def plan(
    file: Path = SiteFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print the resolved site as JSON.")] = False,
    users_shown: Annotated[int, typer.Option("--show-users", help="User rows to print (0 = all).")] = 5,
) -> None:
    """Show everything the site resolves to: containers, routes, tenant slices, totals."""
    resolved = load_resolved(file)
    if as_json:
        print(json.dumps(resolved.to_dict(), indent=1))
        return
    print_plan(resolved, users_shown)


def print_plan(r: ResolvedSite, users_shown: int = 5) -> None:
    site = r.site
    console.print(f"[bold]site {site.name}[/] ({site.domain}), driver {site.driver.kind}, "
                  f"Traefik {r.proxy_ip} -> {site.network.traefik.dynamic_dir}")
    t = Table("CTID", "IP", "hostname", "phase", "RAM GB", "cores", "disk GB", "traefik file", "node",
              title="shared services")
    for c in (c for c in r.containers if c.role == "shared"):
        t.add_row(str(c.ctid), c.ip, c.hostname, str(c.phase), f"{c.memory_mb / 1024:g}", str(c.cores),
                  str(c.disk_gb), c.traefik_file, c.node or "-")
    console.print(t)
    ext = [e for e in r.endpoints.values() if e.external]
    if ext:
        console.print("external: " + ", ".join(f"{e.service} at {e.host}" for e in ext))
    users = [c for c in r.containers if c.role == "user"]
    t = Table("CTID", "IP", "user", "apps", "databases", "redis", "qdrant prefix", "buckets",
              title=f"user containers ({len(users)})")
    by_user = {x.user: x for x in r.tenants}
    show = users if users_shown <= 0 else users[:users_shown]
    for c in show:
        tn = by_user[c.name]
        t.add_row(str(c.ctid), c.ip, c.name, str(len(c.services)), ", ".join(tn.databases),
                  f"{tn.redis_user} {tn.redis_prefix}*", tn.qdrant_prefix + "_*", ", ".join(tn.buckets))
    if len(show) < len(users):
        t.add_row("...", "...", f"{len(users) - len(show)} more", "", "", "", "", "")
    console.print(t)
    if r.tenants:
        tn = r.tenants[0]
        console.print(f"routes of {tn.user}: " + ", ".join(f"{h} -> :{tn.ports[a]}" for a, h in tn.hosts.items()))
    shared_routes = [x for x in r.routes if x.owner is None]
    console.print("shared routes: " + ", ".join(f"{x.host}" + (f" (x{len(x.urls)})" if len(x.urls) > 1 else "")
                                               for x in shared_routes))
    t = Table("total", "this plan", "seed", title="totals")
    tot = r.totals
    for key, val in (("containers", tot.containers), ("shared_containers", tot.shared_containers),
                     ("user_containers", tot.user_containers), ("service_instances", tot.service_instances),
                     ("app_instances", tot.app_instances), ("memory_gb", tot.memory_gb),
                     ("disk_tb", tot.disk_tb), ("cores", tot.cores)):
        t.add_row(key.replace("_", " "), str(val), SEED_FIGURES[key])
    console.print(t)
    for n in r.notes:
        console.print(f"[yellow]note:[/] {n}")
