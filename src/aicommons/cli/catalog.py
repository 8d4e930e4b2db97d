"""`aicommons catalog verify`: every rendered setting against its component's own code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aicommons.cli.common import console
from aicommons.errors import AicError


class SettingsUnread(AicError):
    """A rendered setting its component does not read, or a value its code refuses."""


def register(app: typer.Typer) -> None:
    sub = typer.Typer(help="The service and app catalog.", no_args_is_help=True)
    sub.command("verify")(verify)
    app.add_typer(sub, name="catalog")


def verify(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Site to render (default: every catalog service and app).")] = None,
    registries: Annotated[bool, typer.Option("--registries", help="Also ask PyPI/npm/Debian whether each pin exists.")] = False,
) -> None:
    """Check each rendered environment variable and config key against the component's published code."""
    from aicommons.catalog.verify import pinned_versions, registry_checks
    from aicommons.catalog.verify import verify as check
    from aicommons.plan import resolve
    from aicommons.render import render_site
    from aicommons.spec.load import load_site, load_text

    if file is None:
        from aicommons.spec.default import render_site_yaml

        site, index = load_text(render_site_yaml(users=1, driver="proxmox"))
    else:
        site, index = load_site(file)
    # Only names are checked: placeholder secrets, no state store needed.
    files = render_site(resolve(site, index=index), lambda scope, key: "x" * 40)
    rep = check(files, pinned_versions())
    for comp, where in sorted(rep.confirmed.items()):
        named = rep.named.get(comp, [])
        if len(where) > len(named):
            console.print(f"[green]ok[/] {comp}: {len(where) - len(named)} settings read by its code"
                          + (f" (approximate: {rep.approximate[comp]})" if comp in rep.approximate else ""))
        if named:
            console.print(f"[yellow]named only[/] {comp}: {', '.join(named)} — the record gives a file that names "
                          "them, not the code that reads them (re-read and record `file` + `read`)")
    for comp, (keys, why) in sorted(rep.live.items()):
        console.print(f"[cyan]live[/] {comp}: {len(keys)} settings, {why}")
    for comp, (keys, why) in sorted(rep.unchecked.items()):
        console.print(f"[yellow]unchecked[/] {comp}: {', '.join(keys)} — {why}")
    if registries:
        for what, pin, result in registry_checks():
            console.print(f"  {what} {pin}: {result}")
    for comp, rules in sorted(rep.values.items()):
        console.print(f"[green]ok[/] {comp} values: " + ", ".join(f"{k} {r}" for k, r in sorted(rules.items())))
    problems = [f"{c}: {', '.join(k)}" for c, k in sorted(rep.missing.items())]
    problems += [f"{c}: {x}" for c, xs in sorted(rep.not_read.items()) for x in xs]
    wrong = [f"{c}: {x}" for c, xs in sorted(rep.wrong.items()) for x in xs]
    parts = []
    if problems:
        parts.append("settings not shown to be read by their component (no record, or evidence that is not a read "
                     "— fix src/aicommons/catalog/evidence.yaml): " + "; ".join(problems))
    if wrong:
        parts.append("rendered values their component's code refuses (fix the renderer): " + "; ".join(wrong))
    if parts:
        raise SettingsUnread("; ".join(parts))
