"""Operations commands: `status` and `backup run|list|verify|restore|schedule`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from aicommons.cli.common import SiteFile, console, load_resolved
from aicommons.drivers.registry import enter_site_network, site_owner
from aicommons.ops.site import KINDS, backup_repo, check_user, fetch_if_remote, secrets_for
from aicommons.ops.targets import parse_targets
from aicommons.render.monitoring import TEXTFILE_DIR

TargetOpt = typer.Option(
    None, "--target", "-t", metavar="PLAN=ACTUAL",
    help="Reach a plan address elsewhere, e.g. 10.0.5.103:6379=127.0.0.1:16379 (an SSH tunnel). Repeatable.")
TargetsFile = typer.Option(None, "--targets", help="YAML mapping plan address -> actual host:port.")


def status(
    file: Path = SiteFile,
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    watch: float = typer.Option(0, "--watch", help="Repeat every N seconds until interrupted."),
    timeout: float = typer.Option(3.0, "--timeout", help="Seconds each check may take."),
    slow_ms: float = typer.Option(1000, "--slow-ms", help="An answer slower than this is reported slow."),
    target: list[str] = TargetOpt,
    targets: Path = TargetsFile,
) -> None:
    """Check every service of the site concurrently. Exit 0 healthy, 1 degraded, 2 critical."""
    from aicommons.ops.status import limit_results, run_status, table, to_json, verdict

    resolved = load_resolved(file)
    enter_site_network(resolved.site, site_owner(file))
    mapping = parse_targets(target, targets)
    secrets = secrets_for(file, resolved.site)
    while True:
        code, results = run_status(resolved, secrets=secrets, targets=mapping, timeout=timeout,
                                   slow_ms=slow_ms, base_dir=file.resolve().parent)
        results += limit_results(_limit_readings(resolved, file))
        code = verdict(results)
        if as_json:
            console.print_json(json.dumps(to_json(code, results)))
        else:
            if watch:
                console.clear()
            console.print(table(code, results))
        if not watch:
            raise SystemExit(code)  # main() returns it; typer.Exit is swallowed without standalone mode
        time.sleep(watch)


def _limit_readings(resolved, file: Path) -> list:
    """The containers' limits read back from the kernel, where the site's driver can (LXC, on its host)."""
    from aicommons.drivers.base import ReadsLimits
    from aicommons.engine.api import default_driver

    if resolved.site.driver.kind != "lxc":
        return []
    driver = default_driver(resolved.site, file)
    return driver.read_limits(resolved.containers) if isinstance(driver, ReadsLimits) else []


# ---- backups ---------------------------------------------------------------------------------

backup_app = typer.Typer(help="Back up, list, verify and restore the site's data.", no_args_is_help=True)
DirOpt = typer.Option(None, "--dir", help="Backup directory (default: site.yaml backups.dir).")
OnlyOpt = typer.Option(None, "--only", help=f"Limit to these back ends (comma list of {', '.join(KINDS)}).")


def _context(file: Path, dir_: Path | None, only: str | None, target: list[str] | None, targets: Path | None):
    from aicommons.ops.site import backup_context

    resolved = load_resolved(file)
    enter_site_network(resolved.site, site_owner(file))
    src, repo = backup_context(file, resolved, dir_, only, parse_targets(target, targets))
    return resolved, src, repo


def _user(resolved, user: str | None) -> str | None:
    return check_user(resolved, user)


@backup_app.command("run")
def backup_run(
    file: Path = SiteFile, user: str = typer.Option(None, "--user", help="Back up only this user's data."),
    dir_: Path = DirOpt, only: str = OnlyOpt,
    prune: bool = typer.Option(False, "--prune", help="Apply retention (backups.daily / backups.weekly)."),
    upload: bool = typer.Option(True, help="Copy to backups.s3_url when it is set."),
    textfile_dir: Path = typer.Option(
        Path(TEXTFILE_DIR), help="node exporter textfile directory for the "
        "last-good-backup metric (skipped when it does not exist)."),
    target: list[str] = TargetOpt, targets: Path = TargetsFile,
) -> None:
    """Write one complete backup (or none: an interrupted run leaves the last good one as it was)."""
    from aicommons.ops.backup import site as bsite
    from aicommons.ops.backup.run import run_backup

    resolved, src, repo = _context(file, dir_, only, target, targets)
    m = run_backup(resolved, src, repo, user=_user(resolved, user), step=lambda w: console.print(f"  {w}"))
    total = sum(i.size for i in m.items)
    console.print(f"backup {m.id}: {len(m.items)} items, {total / 1e6:.1f} MB in {repo.root / m.id}")
    for i in m.items:
        if i.kind == "skipped":
            console.print(f"  [yellow]skipped[/] {i.name}: {i.detail.get('reason')}")
    if resolved.site.backups.s3_url and upload:
        n = bsite.upload(repo, m.id, resolved.site.backups.s3_url)
        console.print(f"copied {n} files to {resolved.site.backups.s3_url}")
    if textfile_dir.is_dir():
        bsite.record_success(m, textfile_dir)
    if prune:
        gone = bsite.apply_retention(repo, resolved.site.backups.daily, resolved.site.backups.weekly)
        console.print(f"retention removed {len(gone)} old backups" + (f": {', '.join(gone)}" if gone else ""))


@backup_app.command("list")
def backup_list(file: Path = SiteFile, dir_: Path = DirOpt,
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Complete backups, newest first."""
    from rich.table import Table

    resolved = load_resolved(file)
    repo = backup_repo(file, resolved, dir_)
    items = repo.list()
    if as_json:
        console.print_json(json.dumps([{"id": m.id, "created": m.created, "user": m.user, "items": len(m.items),
                                        "bytes": sum(i.size for i in m.items)} for m in items]))
        return
    t = Table("id", "created", "scope", "items", "size")
    for m in items:
        t.add_row(m.id, m.created, m.user or "site", str(len(m.items)), f"{sum(i.size for i in m.items) / 1e6:.1f} MB")
    console.print(t)


def _local(repo, backup_id: str, resolved) -> None:
    fetch_if_remote(repo, backup_id, resolved)


@backup_app.command("verify")
def backup_verify(backup_id: str, file: Path = SiteFile, dir_: Path = DirOpt, only: str = OnlyOpt,
                  target: list[str] = TargetOpt, targets: Path = TargetsFile) -> None:
    """Check checksums and restore every database into a scratch database. Exit 1 on any problem."""
    from aicommons.ops.backup.run import verify_backup

    resolved, src, repo = _context(file, dir_, only, target, targets)
    _local(repo, backup_id, resolved)
    problems = verify_backup(repo, backup_id, src)
    for p in problems:
        console.print(f"[red]problem:[/] {p}")
    if problems:
        raise SystemExit(1)
    console.print(f"backup {backup_id} is good: checksums match and it restores")


@backup_app.command("restore")
def backup_restore(backup_id: str, file: Path = SiteFile,
                   user: str = typer.Option(None, "--user", help="Restore only this user; nobody else is touched."),
                   dir_: Path = DirOpt, only: str = OnlyOpt,
                   yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
                   target: list[str] = TargetOpt, targets: Path = TargetsFile) -> None:
    """Put a backup's data back (replacing what is there now)."""
    from aicommons.ops.backup.run import restore_backup

    resolved, src, repo = _context(file, dir_, only, target, targets)
    _user(resolved, user)
    _local(repo, backup_id, resolved)
    what = f"user {user}'s data" if user else "every user's data and the site's databases"
    if not yes and not typer.confirm(f"Replace {what} with backup {backup_id}?"):
        raise SystemExit(1)
    done = restore_backup(resolved, repo, backup_id, src, user=user, step=lambda w: console.print(f"  {w}"))
    console.print(f"restored {len(done)} items from {backup_id}")


@backup_app.command("schedule")
def backup_schedule(file: Path = SiteFile,
                    out: Path = typer.Option(None, "--out", help="Write the files here (default: print them)."),
                    exe: str = typer.Option("/usr/local/bin/aicommons", help="Path of aicommons on the host.")) -> None:
    """Render the nightly backup: a systemd service + timer and a cron line, for the control host."""
    from aicommons.ops.backup.schedule import render_schedule

    resolved = load_resolved(file)
    files = render_schedule(resolved.site.name, file.resolve(), exe)
    if out is None:
        for f in files.values():
            typer.echo(f"# --- {f.path}\n{f.content}")
        return
    from aicommons.render.write import write_tree

    res = write_tree(files, out)
    console.print(f"wrote {len(res.written)} files to {out} ({len(res.unchanged)} unchanged)")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("status")(status)
    app.add_typer(backup_app, name="backup")
