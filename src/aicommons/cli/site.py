"""Commands about the site file itself: init, validate, schema, catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aicommons.cli.common import SiteFile, console, load
from aicommons.errors import AicError, SiteInvalid


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(validate)
    app.command()(schema)
    app.command()(catalog)


def init(
    users: Annotated[int, typer.Option(min=0, max=20000, help="Number of users user1..userN.")] = 50,
    domain: Annotated[str, typer.Option(help="The site's domain.")] = "valuechainhackers.xyz",
    driver: Annotated[str, typer.Option(help="proxmox or lxc.")] = "proxmox",
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the site file.")] = Path("site.yaml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented site.yaml that reproduces the reference architecture's site."""
    from aicommons.fsutil import write_file
    from aicommons.spec.default import LXC_CORE, render_site_yaml
    from aicommons.spec.load import load_text

    if driver not in ("proxmox", "lxc"):
        raise AicError(f"--driver: {driver!r} is not a driver; use proxmox or lxc")
    if out.exists() and not force:
        raise AicError(f"{out} exists; pass --force to overwrite it, or --out another path")
    text = render_site_yaml(users=users, domain=domain, driver=driver,
                            services=LXC_CORE if driver == "lxc" else None)
    load_text(text)  # what init writes must load; fail here rather than at plan time
    out.parent.mkdir(parents=True, exist_ok=True)
    if not write_file(out, text, replace=force):  # never over a file someone made since the check
        raise AicError(f"{out} exists; pass --force to overwrite it, or --out another path")
    console.print(f"wrote {out} ({users} users, domain {domain}, driver {driver})")


def validate(file: Path = SiteFile) -> None:
    """Check the site file: exit 0 if valid, 2 listing every problem with its line and fix."""
    from aicommons.plan import check

    site, index = load(file)
    problems = check(site, index=index)
    if problems:
        raise SiteInvalid(problems)
    console.print(f"{file}: valid ({len(site.users)} users, {sum(o.enabled for o in site.services.values())} services)")


def schema() -> None:
    """Print the JSON Schema of site.yaml."""
    from aicommons.spec.models import Site

    print(json.dumps(Site.model_json_schema(), indent=2))


def catalog(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the catalog: shared services and per-user apps."""
    from aicommons.catalog import load_catalog

    cat = load_catalog()
    if as_json:
        print(json.dumps({"services": {k: v.model_dump() for k, v in cat.services.items()},
                          "apps": {k: v.model_dump() for k, v in cat.apps.items()}}, indent=2))
        return
    t = Table("service", "phase", "address", "version", "ports", "install", title="shared services")
    for s in sorted(cat.services.values(), key=lambda s: (s.phase, s.octet or 999)):
        t.add_row(s.name, str(s.phase), f".{s.octet}" if s.octet else "-", s.version,
                  ",".join(str(p.port) for p in s.ports), s.install.method)
    console.print(t)
    t = Table("app", "port", "route", "image", "needs", title="per-user apps")
    for a in cat.apps.values():
        t.add_row(a.name, str(a.port), f"{a.route_prefix}-USER", a.image, ",".join(a.needs))
    console.print(t)
