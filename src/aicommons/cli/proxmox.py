"""`aicommons proxmox check`: what the site's API token can see and do, before any change."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from aicommons.cli.common import SiteFile, console, load_resolved
from aicommons.errors import AicError


def register(app: typer.Typer) -> None:
    px = typer.Typer(help="Proxmox VE: checks against the cluster (read only).", no_args_is_help=True)
    px.command()(check)
    app.add_typer(px, name="proxmox")


def check(file: Path = SiteFile) -> None:
    """Read what the token may do and which storage it sees; list every missing privilege and
    unsupported storage (exit 1), or say it is ready (exit 0). Changes nothing."""
    from aicommons.drivers.proxmox.driver import ProxmoxDriver

    resolved = load_resolved(file)
    site = resolved.site
    if site.driver.kind != "proxmox":
        raise AicError(f"driver.kind is {site.driver.kind}; `proxmox check` is for driver.kind: proxmox")
    driver = ProxmoxDriver.from_site(site, base_dir=Path(file).resolve().parent)
    try:
        rep = driver.preflight(resolved.containers)
    finally:
        driver.close()
    for p in rep.problems:
        console.print(f"[red]problem:[/] {escape(p)}", soft_wrap=True)
    for n in rep.notes:
        console.print(f"note: {escape(n)}", soft_wrap=True)
    if rep.problems:
        raise AicError(f"{len(rep.problems)} problem(s): docs/proxmox.md lists the ACL and storage the site needs")
    console.print(f"ok: token {site.driver.token_id} can build this site on the cluster")
