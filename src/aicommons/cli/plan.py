"""`aicommons plan`: the resolved site and the diff against the state and reality."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aicommons.cli.common import SiteFile, console, err_console, load_resolved
from aicommons.errors import AicError, SiteInvalid
from aicommons.plan.model import REFERENCE_FIGURES, ResolvedSite

StateOpt = typer.Option("--state", help="State file or postgresql:// URL "
                         "(default: $AICOMMONS_STATE, else .aicommons/state.db beside the site file).")


def register(app: typer.Typer) -> None:
    app.command()(plan)


def plan(
    file: Path = SiteFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON (no secrets).")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Save the plan for `aicommons apply FILE`.")] = None,
    detailed: Annotated[bool, typer.Option("--detailed-exitcode", help="Exit 0: no changes, 2: changes, 1: error.")] = False,
    destroy: Annotated[bool, typer.Option("--destroy", help="Plan removing everything the site created.")] = False,
    state: Annotated[str | None, StateOpt] = None,
    users_shown: Annotated[int, typer.Option("--show-users", help="User rows to print (0 = all).")] = 5,
    changes_shown: Annotated[int, typer.Option("--show-changes", help="Change rows to print (0 = all).")] = 40,
) -> None:
    """Show what the site resolves to and what apply would change (create/update/replace/delete, with reasons)."""
    from aicommons.engine.api import plan_site, save_plan

    strict = detailed or out is not None
    try:
        p = plan_site(file, state_path=state, destroy=destroy)
    except SiteInvalid as exc:
        if detailed:
            exc.exit_code = 1
        raise
    except (AicError, ImportError, OSError) as exc:
        if strict or destroy:
            if isinstance(exc, AicError):
                exc.exit_code = 1
                raise
            raise AicError(f"cannot read the site's reality: {exc}") from None
        # Reality unreadable (no driver here, API down): still show what the site resolves to.
        err_console.print(f"[yellow]warning:[/] reality not read ({exc}); showing the resolved site only",
                          soft_wrap=True)
        held, certs = _held(file, state)
        resolved = load_resolved(file, held=held, certificates=certs)
        if as_json:
            print(json.dumps({**resolved.to_dict(), "changes": None, "reality": str(exc)}, indent=1))
        else:
            print_plan(resolved, users_shown)
        return
    if out is not None:
        save_plan(p, out)
    if as_json:
        print(json.dumps(p.to_dict(), indent=1, sort_keys=True))
    else:
        if not destroy:
            print_plan(p.resolved, users_shown)
        print_changes(p, changes_shown)
        if out is not None:
            console.print(f"saved the plan to {out}; `aicommons apply {out}` carries it out")
    if detailed and not p.empty:
        raise SystemExit(2)  # typer.Exit is swallowed by main(standalone_mode=False)


def _held(file: Path, state: str | None) -> tuple[dict[str, str], dict]:
    """(held slots, certificate assignment) from the state, if there is one."""
    from aicommons.engine.api import CERTS_META, open_state
    from aicommons.plan import certificates as certs_plan

    try:
        s = open_state(file, state, create=False)
    except AicError:
        return {}, {}  # no state yet: nothing is held
    try:
        return s.held_slots(), certs_plan.from_json(s.meta(CERTS_META))
    finally:
        s.close()


def print_changes(p, shown: int = 40) -> None:
    c = p.counts()
    pending = [x for x in p.changes if x.action != "no-op"]
    if not pending:
        console.print(f"[green]no changes[/]: {c['no-op']} resources match the site")
    else:
        t = Table("action", "address", "reason", title=f"changes ({len(p.steps)} steps)")
        rows = pending if shown <= 0 else pending[:shown]
        colour = {"create": "green", "update": "yellow", "replace": "magenta", "delete": "red"}
        for x in rows:
            t.add_row(f"[{colour[x.action]}]{x.action}[/]", x.address, x.reason)
        if len(rows) < len(pending):
            t.add_row("...", f"{len(pending) - len(rows)} more", "--show-changes 0 lists all")
        console.print(t)
        console.print("plan: " + ", ".join(f"{n} to {a}" for a, n in c.items() if a != "no-op")
                      + f", {c['no-op']} unchanged")
    for n in p.notes:
        console.print(f"[yellow]note:[/] {n}", soft_wrap=True)
    sys.stdout.flush()


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
    if r.model_units:
        t = Table("model", "kind", "port", "threads", "source", title="models (llama-server)")
        for u in r.model_units:
            m = u.model
            t.add_row(m.name, m.kind + (f" ({m.pooling} pooling)" if m.pooling else ""), str(u.port), str(u.threads),
                      f"{m.package} {m.file}" if m.package else str(m.path))
        console.print(t)
    shared_routes = [x for x in r.routes if x.owner is None]
    console.print("shared routes: " + ", ".join(f"{x.host}" + (f" (x{len(x.urls)})" if len(x.urls) > 1 else "")
                                               for x in shared_routes))
    t = Table("certificate", "names", "first name", "change", title=f"certificates ({len(r.certificates)})")
    for cert in r.certificates:
        t.add_row(cert.name, str(len(cert.hosts)), cert.hosts[0], r.certificate_changes.get(cert.name, "kept"))
    for name, what in r.certificate_changes.items():
        if what == "removed":
            t.add_row(name, "0", "-", "removed")
    console.print(t)
    t = Table("total", "this plan", "reference architecture", title="totals")
    tot = r.totals
    for key, val in (("containers", tot.containers), ("shared_containers", tot.shared_containers),
                     ("user_containers", tot.user_containers), ("service_instances", tot.service_instances),
                     ("app_instances", tot.app_instances), ("memory_gb", tot.memory_gb),
                     ("disk_tb", tot.disk_tb), ("cores", tot.cores)):
        t.add_row(key.replace("_", " "), str(val), REFERENCE_FIGURES[key])
    console.print(t)
    for n in r.notes:
        console.print(f"[yellow]note:[/] {n}")
