"""`apply`, `up`, `down`, `secrets rotate`, `state show|history|unlock`: thin shells over aicommons.engine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aicommons.cli.common import SiteFile, console
from aicommons.errors import AicError

StateOpt = typer.Option("--state", help="State file or postgresql:// URL "
                         "(default: $AICOMMONS_STATE, else .aicommons/state.db beside the site file).")
Yes = typer.Option("--yes", "-y", help="Do not ask before changing anything.")
Parallel = typer.Option("--parallelism", min=1, max=64, help="Steps run at once.")
LockWait = typer.Option("--lock-timeout", min=0, help="Seconds to wait for another apply to finish.")

secrets_app = typer.Typer(help="Secrets kept encrypted in the state (values are never printed here).",
                          no_args_is_help=True)
state_app = typer.Typer(help="Look at the state: allocations, secrets' versions, runs, the lock.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command()(apply)
    app.command()(up)
    app.command()(down)
    app.add_typer(secrets_app, name="secrets")
    app.add_typer(state_app, name="state")


def _confirm(question: str):
    def ask(plan) -> bool:
        from aicommons.cli.plan import print_changes

        print_changes(plan)
        if not sys.stdin.isatty():
            raise AicError("not a terminal, so no one can confirm: pass --yes to apply, or save a plan with "
                           "`aicommons plan --out plan.json` and run `aicommons apply plan.json`")
        return typer.confirm(question, default=False)
    return ask


def _run(file: Path, *, yes: bool, question: str, **kw) -> None:
    from aicommons.engine.api import apply_site

    result = apply_site(file, yes=yes, confirm=_confirm(question), **kw)
    if not result.ok:
        raise SystemExit(1)  # typer.Exit is swallowed by main(standalone_mode=False)


def apply(
    plan_file: Annotated[Path | None, typer.Argument(help="A plan saved with `plan --out`; applied exactly.")] = None,
    file: Path = SiteFile,
    yes: Annotated[bool, Yes] = False,
    parallelism: Annotated[int, Parallel] = 4,
    lock_timeout: Annotated[float, LockWait] = 0.0,
    target: Annotated[list[str] | None, typer.Option("--target", help="Limit to a user or resource address.")] = None,
    state: Annotated[str | None, StateOpt] = None,
) -> None:
    """Make the site real: carry out the saved plan, or plan now and ask first (unless --yes)."""
    if plan_file is not None and not plan_file.exists():
        raise AicError(f"{plan_file}: no such plan file; `aicommons plan --out {plan_file}` makes one")
    _run(file, yes=yes or plan_file is not None, question="apply these changes?", plan_file=plan_file,
         parallelism=parallelism, lock_timeout=lock_timeout, targets=set(target or ()), state_path=state)


def up(
    file: Path = SiteFile,
    yes: Annotated[bool, Yes] = False,
    users: Annotated[int, typer.Option(help="Users in a new site file.")] = 3,
    parallelism: Annotated[int, Parallel] = 4,
    lock_timeout: Annotated[float, LockWait] = 0.0,
    state: Annotated[str | None, StateOpt] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Run every preflight and show the plan; write and "
                                          "change nothing (the site file `up` would write is only shown).")] = False,
) -> None:
    """Write site.yaml if it is missing (LXC driver, the reference architecture's core services, 3 users), then plan and apply."""
    if dry_run:
        _dry_run(file, users, state)
        return
    if not file.exists():
        from aicommons.fsutil import write_file
        from aicommons.spec.default import LXC_CORE, render_site_yaml

        file.parent.mkdir(parents=True, exist_ok=True)
        # Whole or not at all, and never over a file another `up` or `init` made meanwhile.
        if write_file(file, render_site_yaml(users=users, driver="lxc", services=LXC_CORE), replace=False):
            console.print(f"wrote {file} (LXC driver, {len(LXC_CORE)} core services, {users} users)")
    _run(file, yes=yes, question="bring the site up?", parallelism=parallelism, lock_timeout=lock_timeout,
         state_path=state)


def _dry_run(file: Path, users: int, state: str | None) -> None:
    """`up --dry-run`: the host preflight (what `up` would refuse on), the site file's checks and the
    plan, all read-only. A missing site file is the default `up` would write, read from a scratch copy."""
    import tempfile

    from aicommons.cli.plan import print_changes
    from aicommons.engine.api import plan_site
    from aicommons.spec.default import LXC_CORE, render_site_yaml

    with tempfile.TemporaryDirectory(prefix="aicommons-up-") as tmp:
        if not file.exists():
            console.print(f"would write {file} (LXC driver, {len(LXC_CORE)} core services, {users} users)")
            file = Path(tmp) / file.name
            file.write_text(render_site_yaml(users=users, driver="lxc", services=LXC_CORE))
        plan = plan_site(file, state_path=state, check_host=True)
        console.print("preflight: this host has every program and package the site's driver runs")
        print_changes(plan)
    console.print("dry run: nothing was written or changed; `aicommons up` without --dry-run applies it")


def down(
    file: Path = SiteFile,
    yes: Annotated[bool, Yes] = False,
    purge: Annotated[bool, typer.Option("--purge", help="Delete data instead of archiving it.")] = False,
    parallelism: Annotated[int, Parallel] = 4,
    lock_timeout: Annotated[float, LockWait] = 0.0,
    state: Annotated[str | None, StateOpt] = None,
) -> None:
    """Remove what the site created: routes, tenant slices (archived unless --purge), containers."""
    q = "remove the site and DELETE its data?" if purge else "remove the site (data is archived)?"
    _run(file, yes=yes, question=q, destroy=True, purge=purge, parallelism=parallelism,
         lock_timeout=lock_timeout, state_path=state, command="down")


@secrets_app.command("rotate")
def secrets_rotate(
    scope: Annotated[str, typer.Argument(help="A user name, or `site`.")],
    key: Annotated[str, typer.Argument(help="The secret's name, e.g. postgres_password.")],
    file: Path = SiteFile,
    yes: Annotated[bool, Yes] = False,
    no_apply: Annotated[bool, typer.Option("--no-apply", help="Only store the new value; the next apply pushes it.")] = False,
    lock_timeout: Annotated[float, LockWait] = 0.0,
    state: Annotated[str | None, StateOpt] = None,
) -> None:
    """New value for one secret; then one apply changes the back end and every file that uses it."""
    from aicommons.engine.api import key_source, open_state
    from aicommons.spec.load import load_site

    if scope == "site" and ("admin" in key or key.endswith("_token")):
        raise AicError(f"rotating {key} needs the server to change its admin credential first; this is not "
                       f"automated yet (rotate tenant secrets, e.g. `secrets rotate user1 postgres_password`)")
    site, _ = load_site(file)
    st = open_state(file, state)
    try:
        version = st.secrets(key_source(site, st, file)).rotate(scope, key)
    finally:
        st.close()
    console.print(f"{scope}/{key} is now version {version} (value not shown)")
    if not no_apply:
        _run(file, yes=yes, question="push the new value?", targets=None if scope == "site" else {scope},
             lock_timeout=lock_timeout, state_path=state, command=f"secrets rotate {scope} {key}")


@secrets_app.command("list")
def secrets_list(file: Path = SiteFile, state: Annotated[str | None, StateOpt] = None) -> None:
    """Names and versions of the stored secrets (never their values)."""
    st = _open(file, state)
    t = Table("scope", "key", "version", title="secrets")
    for scope, key, version in st._read("SELECT scope, key, version FROM secrets ORDER BY scope, key"):
        t.add_row(scope, key, str(version))
    console.print(t)


def _open(file: Path, state: str | None):
    from aicommons.engine.api import open_state

    return open_state(file, state, create=False)


@state_app.command("show")
def state_show(file: Path = SiteFile, state: Annotated[str | None, StateOpt] = None) -> None:
    """Allocations, what was applied, and who holds the lock."""
    from aicommons.state.lock import StateLock

    st = _open(file, state)
    t = Table("user", "IP", "CTID", "status", title="allocations")
    for a in st.allocations():
        t.add_row(a.user, a.ip, str(a.ctid), a.status)
    console.print(t)
    kinds: dict[str, int] = {}
    for rec in st.applied().values():
        kinds[rec.kind] = kinds.get(rec.kind, 0) + 1
    console.print("applied: " + (", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "nothing yet"))
    n = st._read("SELECT COUNT(*) FROM secrets")[0][0]
    console.print(f"secrets: {n} stored encrypted (`aicommons secrets list` shows names and versions)")
    holder = StateLock(st).holder()
    console.print(f"lock: {'held by ' + holder.describe() if holder else 'free'}; state serial {st.serial()}")


@state_app.command("history")
def state_history(file: Path = SiteFile, state: Annotated[str | None, StateOpt] = None,
                  limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """Past runs: who, when, what changed, outcome."""
    import time

    st = _open(file, state)
    t = Table("run", "command", "who", "started", "outcome", "steps", title="runs")
    for r in st.runs(limit):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started_at))
        steps = ", ".join(f"{k} {v}" for k, v in r.summary.items() if k in ("ok", "failed", "skipped"))
        t.add_row(str(r.id), r.command, f"{r.who}@{r.host}", started, r.outcome, steps)
    console.print(t)


@state_app.command("unlock")
def state_unlock(file: Path = SiteFile, state: Annotated[str | None, StateOpt] = None,
                 yes: Annotated[bool, Yes] = False) -> None:
    """Break the apply lock (only when its holder is really gone)."""
    from aicommons.state.lock import StateLock

    st = _open(file, state)
    lock = StateLock(st)
    holder = lock.holder()
    if holder is None:
        console.print("the state is not locked")
        return
    if holder.alive():
        raise AicError(f"the lock holder is alive: {holder.describe()}; let it finish")
    if not yes and not typer.confirm(f"break the lock of {holder.describe()}?", default=False):
        raise AicError("left the lock in place")
    lock.force_unlock()
    console.print(f"broke the lock of {holder.describe()}")
