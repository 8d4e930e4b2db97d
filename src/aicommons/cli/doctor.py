"""`aicommons doctor`: does this host have what the LXC driver runs? (drivers/lxc/needs.py)"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from aicommons.cli.common import console


def register(app: typer.Typer) -> None:
    app.command()(doctor)


def doctor(
    missing_only: Annotated[bool, typer.Option("--missing", help="List only what is missing.")] = False,
) -> None:
    """Check every program and package `up`, `apply`, `status`, `backup`, `serve` and `users` need on
    the default (LXC) driver, and where each comes from, and that this kernel can mount the containers'
    rootfs (idmapped mounts, overlayfs over them). Exit 0 when nothing is missing, 1 otherwise."""
    from aicommons.drivers.lxc import needs

    found, problems = needs.check()
    rows = [(f.need.name, f.need.origin, ", ".join(f.need.used_by), f.where or "MISSING")
            for f in found if not (missing_only and f.ok)]
    if rows:
        rows.insert(0, ("needed", "from", "by", "found"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[3]
            console.print(f"[red]{escape(line)}[/]" if r[3] == "MISSING" else escape(line), soft_wrap=True)
    missing = [f for f in found if not f.ok]
    if missing or problems:
        console.print(escape(needs.summary(missing, problems)), soft_wrap=True)
        raise SystemExit(1)
    console.print(f"nothing missing: {len(found)} programs and packages checked; this kernel mounts the "
                  f"containers' rootfs (idmapped template under an overlay) on {needs.DEFAULT_CACHE_DIR}'s filesystem")
