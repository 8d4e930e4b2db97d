"""`users add|remove|list|show|suspend|resume` and `audit isolation`: thin shells over ops.users."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aicommons.cli.common import SiteFile, console, err_console
from aicommons.errors import AicError

users_app = typer.Typer(help="Add, remove, suspend and inspect users.", no_args_is_help=True)
audit_app = typer.Typer(help="Prove properties of the running site.", no_args_is_help=True)
StateOpt = typer.Option("--state", help="State file (default: .aicommons/state.db beside the site file).")
LockWait = typer.Option("--lock-timeout", min=0, help="Seconds to wait for another run on this site to finish.")


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(audit_app, name="audit")


def _result(result, what: str, retry: str) -> None:
    for o in result.errors:
        err_console.print(f"  {o.status}: {getattr(o, 'step', '')} {o.detail}".rstrip(), soft_wrap=True)
    if not result.ok:
        raise AicError(f"{what} did not finish; nothing done is lost. Fix the cause and run `{retry}` again "
                       f"(or `aicommons apply`)")


@users_app.command("add")
def add(name: Annotated[str, typer.Argument(help="Lower-case letters, digits and '-'.")],
        email: Annotated[str | None, typer.Option(
            "--email", help="The person's e-mail (required for a new user: sign-in, invitation, password resets).")] = None,
        file: Path = SiteFile, state: Annotated[Path | None, StateOpt] = None,
        lock_timeout: Annotated[float, LockWait] = 0.0) -> None:
    """Add a user to site.yaml and provision them (allocation, back ends, files, container)."""
    from aicommons.ops.users import add_user

    added, result = add_user(file, name, email, state_path=state, lock_timeout=lock_timeout)
    if not added:
        console.print(f"{name} is already in {file}; completing its provisioning")
    if not result.ok:
        err_console.print(f"{name} stays in {file}: part of it was made, and `aicommons users add {name}` "
                          f"(or `apply`) completes it; `aicommons users remove {name}` undoes it")
    _result(result, f"adding {name}", f"aicommons users add {name}")
    console.print(f"user {name} is ready; `aicommons users show {name}` lists its URLs and credentials")
    if added:
        _print_invitation(file, name, state)


def _print_invitation(file: Path, name: str, state: Path | None, renew: bool = False) -> None:
    from aicommons.ops.enroll import invite_user

    url = invite_user(file, name, state_path=state, renew=renew)
    if url:  # the person's one-time link to set a password (also e-mailed when smtp is set)
        print(f"invitation for {name} (one use): {url}")


@users_app.command("invite")
def invite(name: str, file: Path = SiteFile, state: Annotated[Path | None, StateOpt] = None) -> None:
    """A new one-time invitation link for the user (the previous one stops working)."""
    _print_invitation(file, name, state, renew=True)


@users_app.command("remove")
def remove(name: str, file: Path = SiteFile, state: Annotated[Path | None, StateOpt] = None,
           keep_data: Annotated[bool, typer.Option("--keep-data", help="Revoke logins, keep every byte.")] = False,
           purge: Annotated[bool, typer.Option("--purge", help="Drop data WITHOUT archiving it first.")] = False,
           lock_timeout: Annotated[float, LockWait] = 0.0) -> None:
    """Remove a user: archive (unless --purge) and drop their data, container and site.yaml entry."""
    from aicommons.ops.users import remove_user

    result = remove_user(file, name, keep_data=keep_data, purge=purge, state_path=state, lock_timeout=lock_timeout)
    _result(result, f"removing {name}", f"aicommons users remove {name}")
    how = "data kept, logins revoked" if keep_data else ("purged" if purge else "data archived")
    console.print(f"user {name} removed ({how})")


@users_app.command("list")
def list_(file: Path = SiteFile, state: Annotated[Path | None, StateOpt] = None,
          as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Users of the site with their address and slot status."""
    from aicommons.ops.users import Context

    with Context(file, state_path=state, backends=[], read_only=True) as ctx:
        status = {a.user: a.status for a in ctx.session.state.allocations()}
        rows = [{"user": t.user, "email": t.email, "ip": t.ip, "ctid": t.ctid,
                 "status": status.get(t.user, "planned")} for t in ctx.resolved.tenants]
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    t = Table("user", "email", "ip", "ctid", "slot")
    for r in rows:
        t.add_row(r["user"], r["email"] or "", r["ip"], str(r["ctid"]), r["status"])
    console.print(t)


@users_app.command("show")
def show(name: str, file: Path = SiteFile, state: Annotated[Path | None, StateOpt] = None,
         secrets: Annotated[bool, typer.Option("--secrets", help="Print secret values (default: redacted).")] = False,
         as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The URLs and credentials a user needs."""
    from aicommons.ops.users import show_user

    info = show_user(file, name, reveal=secrets, state_path=state)
    if as_json:
        print(json.dumps(info, indent=1))
        return
    console.print(f"[bold]{info['user']}[/] {info.get('email') or ''}  {info['ip']} (CT {info['ctid']})")
    for k, v in info.items():
        if isinstance(v, dict) and v:
            console.print(f"[bold]{k}[/]")
            for kk, vv in v.items():
                console.print(f"  {kk}: {', '.join(vv) if isinstance(vv, list) else vv}", soft_wrap=True)


@users_app.command("suspend")
def suspend(name: str, file: Path = SiteFile, state: Annotated[Path | None, StateOpt] = None) -> None:
    """Revoke the user's logins in every back end; data is kept."""
    from aicommons.ops.users import set_suspended

    done = set_suspended(file, name, True, state_path=state)
    console.print(f"{name} suspended in: {', '.join(done) or 'no back ends'}")


@users_app.command("resume")
def resume(name: str, file: Path = SiteFile, state: Annotated[Path | None, StateOpt] = None) -> None:
    """Restore the user's logins."""
    from aicommons.ops.users import set_suspended

    done = set_suspended(file, name, False, state_path=state)
    console.print(f"{name} resumed in: {', '.join(done) or 'no back ends'}")


@users_app.command("restart")
def restart(name: str, file: Path = SiteFile, state: Annotated[Path | None, StateOpt] = None) -> None:
    """Restart the user's container (all their apps), under the site's lock."""
    import sys

    from aicommons.ops.users import restart_user

    restart_user(file, name, state_path=state, out=sys.stdout)
    console.print(f"{name}'s workbench restarted")


@audit_app.command("isolation")
def isolation(file: Path = SiteFile, state: Annotated[Path | None, StateOpt] = None,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """With each user's own credentials, try every other user's data ("data"), the bounds on what one
    user can take from the others ("service") and (LXC) from inside each container, as root, the host
    ("host"); exit 1 on any leak or missing bound."""
    from dataclasses import asdict

    from aicommons.ops.users import audit_site

    checks, skipped, warnings = audit_site(file, state_path=state)
    leaks = [c for c in checks if not c.ok]
    if as_json:
        print(json.dumps({"ok": not leaks and not skipped, "leaks": len(leaks), "skipped": skipped,
                          "warnings": warnings,
                          "sections": {s: {"checks": sum(c.section == s for c in checks),
                                           "failed": sum(c.section == s for c in leaks)} for s in ("data", "service")},
                          "checks": [asdict(c) | {"ok": c.ok} for c in checks]}, indent=1))
    else:
        print_matrix([c for c in checks if c.section == "data"])
        print_service([c for c in checks if c.section == "service"])
        for s in skipped:
            err_console.print(f"[yellow]not audited:[/] {s}", soft_wrap=True)
        for w in warnings:
            err_console.print(f"[yellow]warning:[/] {w}", soft_wrap=True)
        for c in leaks:
            err_console.print(f"[red]LEAK[/] {c.backend}: {c.actor} -> {c.target} {c.resource}: expected "
                              f"{c.expected}, got {c.observed} {c.detail}", soft_wrap=True)
        verdict = "isolation holds" if not leaks and not skipped else f"{len(leaks)} leak(s), {len(skipped)} not audited"
        per = ", ".join(f"{s} {sum(c.section == s for c in checks)}" for s in ("data", "service"))
        console.print(f"{len(checks)} checks ({per}): {verdict}")
    if leaks or skipped or not checks:
        raise SystemExit(1)


def print_service(checks) -> None:
    """One row per bound and back end: how many users it was proven for, and who lacks it."""
    if not checks:
        return
    t = Table("back end", "bound (the unbounded thing must be refused)", "result", title="service")
    for key in dict.fromkeys((c.backend, c.resource.split(" on role ")[0].split(" template")[0]) for c in checks):
        cs = [c for c in checks if (c.backend, c.resource.split(" on role ")[0].split(" template")[0]) == key]
        bad = sorted({c.actor for c in cs if not c.ok})
        t.add_row(key[0], key[1], f"[red]MISSING for {', '.join(bad)}[/]" if bad else f"ok ({len(cs)})")
    console.print(t)


def print_matrix(checks) -> None:
    """actor x target, one cell per pair: ok when every probe matched what isolation requires."""
    actors = sorted({c.actor for c in checks})
    targets = sorted({c.target for c in checks})
    t = Table("actor \\ target", *targets, title="isolation (own = must work, others = must be refused)",
              caption="* = server-wide commands (SCAN, KEYS, FLUSHALL, SELECT, …)" if "*" in targets else None)
    for a in actors:
        cells = []
        for tg in targets:
            cs = [c for c in checks if c.actor == a and c.target == tg]
            bad = [c for c in cs if not c.ok]
            cells.append("-" if not cs else (f"[red]{len(bad)} LEAK[/]" if bad else f"ok ({len(cs)})"))
        t.add_row(a, *cells)
    console.print(t)
