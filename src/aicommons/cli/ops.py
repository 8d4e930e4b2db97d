"""Operations commands: `status` and `backup run|list|verify|restore|schedule`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
import yaml

from aicommons.cli.common import SiteFile, console, load_resolved
from aicommons.errors import PermanentError

TargetOpt = typer.Option(
    None, "--target", "-t", metavar="PLAN=ACTUAL",
    help="Reach a plan address elsewhere, e.g. 10.0.5.103:6379=127.0.0.1:16379 (an SSH tunnel). Repeatable.")
TargetsFile = typer.Option(None, "--targets", help="YAML mapping plan address -> actual host:port.")


def _targets(pairs: list[str] | None, path: Path | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PermanentError(f"--targets {path}: cannot read it ({exc}); give a YAML mapping") from None
        if not isinstance(data, dict):
            raise PermanentError(f"--targets {path}: expected a mapping of 'host:port: host:port'")
        out.update({str(k): str(v) for k, v in data.items()})
    for pair in pairs or []:
        plan, sep, actual = pair.partition("=")
        if not sep or ":" not in plan or ":" not in actual:
            raise PermanentError(f"--target {pair!r}: write PLAN_HOST:PORT=ACTUAL_HOST:PORT")
        out[plan] = actual
    for k, v in out.items():
        if not v.rpartition(":")[2].isdigit():
            raise PermanentError(f"target {k} -> {v!r}: the port must be a number")
    return out


def secrets_for(site_file: Path, site):
    """The state store's secrets when the site has been applied, else None (checks log in without)."""
    from aicommons.state.store import StateStore, default_path

    path = default_path(site_file)
    if not path.exists():
        return None
    from aicommons.state.secrets import KeySource

    store = StateStore.open(path, create=False)
    ks = KeySource.default(path.parent, site.secrets.key_file, site.secrets.key_env)
    return store.secrets(ks)


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
    from aicommons.ops.status import run_status, table, to_json

    resolved = load_resolved(file)
    mapping = _targets(target, targets)
    secrets = secrets_for(file, resolved.site)
    while True:
        code, results = run_status(resolved, secrets=secrets, targets=mapping, timeout=timeout,
                                   slow_ms=slow_ms, base_dir=file.resolve().parent)
        if as_json:
            console.print_json(json.dumps(to_json(code, results)))
        else:
            if watch:
                console.clear()
            console.print(table(code, results))
        if not watch:
            raise SystemExit(code)  # main() returns it; typer.Exit is swallowed without standalone mode
        time.sleep(watch)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("status")(status)
