"""User lifecycle as services the CLI calls: add, remove, suspend, resume, show, audit.

site.yaml stays the truth: `add` appends the user (comments kept, via ruamel.yaml) after the new
file has passed validation and resolution, then the engine applies only that user. Because the
engine converges, a run stopped half-way (a back end down) is completed by the next `users add`
of the same name or by `apply`, with nothing created twice.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from aicommons.drivers.base import Closes
from aicommons.errors import AicError, PermanentError, Problem, SiteInvalid
from aicommons.fsutil import write_file
from aicommons.plan.model import ResolvedSite, Tenant
from aicommons.plan.secrets import SITE_SCOPE, tenant_keys
from aicommons.spec.models import User
from aicommons.tenancy.base import AuditCheck, ServiceBounded

REDACTED = "********"
NOT_YET = "(not made yet: `aicommons apply` generates it)"


class UnknownUser(AicError):
    exit_code = 2


# ---- site.yaml ---------------------------------------------------------------------------------

_FIXES = {"name": "user names are lower-case letters, digits and single '-' (e.g. alice, team-2), not a reserved name",
          "email": "give the person's address with --email, e.g. alice@example.org (letters, digits and "
                   ". _ % + - before the @): sign-in, the invitation and password resets go to it"}


def validate_new_user(name: str, email: str | None) -> User:
    """The site model's own rules; quotes, unicode and shell/SQL metacharacters never pass. An
    e-mail is required (the identity provider signs the person in and invites them by it)."""
    try:
        return User.model_validate({"name": name, **({"email": email} if email is not None else {})})
    except ValidationError as exc:
        problems = [Problem(f"users[+].{'.'.join(str(p) for p in e['loc'])}", e["msg"].removeprefix("Value error, "),
                            _FIXES.get(str(e["loc"][0]) if e["loc"] else "", _FIXES["name"]))
                    for e in exc.errors(include_url=False)]
        raise SiteInvalid(problems) from None


def _yaml():
    from ruamel.yaml import YAML

    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)  # the layout `aicommons init` writes
    return y


def _write_atomic(path: Path, text: str) -> None:
    write_file(path, text, replace=True, mode=path.stat().st_mode & 0o777 if path.exists() else 0o644)


class SiteChanged(AicError):
    """site.yaml changed between reading it and writing the edit (by someone not holding the lock)."""


def _check_and_write(site_file: Path, text: str, before: str) -> None:
    """Replace site.yaml with `text` only if it still holds `before` (compare-and-swap; callers
    hold the site's lock, so only an edit made outside aicommons can interleave)."""
    from aicommons.plan import check
    from aicommons.spec.load import load_text

    site, index = load_text(text)  # the new file must load and resolve before it replaces the old one
    problems = check(site, index=index)
    if problems:
        raise SiteInvalid(problems)
    if site_file.read_text(encoding="utf-8") != before:
        raise SiteChanged(f"{site_file} changed while this edit was being made; nothing was written. "
                          "Run the command again")
    _write_atomic(site_file, text)


def _edit_users(site_file: Path, change) -> None:
    """Round-trip site.yaml through ruamel, apply `change(users_seq)`, check the result, write it."""
    y = _yaml()
    before = site_file.read_text(encoding="utf-8")
    data = y.load(before)
    if data.get("users") is None:
        data["users"] = []
    change(data["users"])
    buf = io.StringIO()
    y.dump(data, buf)
    _check_and_write(site_file, buf.getvalue(), before)


def site_lock(site_file, state_path=None, command: str = "edit", timeout: float = 0.0):
    """The site's lock (the one apply takes), held for an edit of site.yaml and the apply after it:
    a second editor waits (up to `timeout`) or is refused before it changed anything."""
    import contextlib

    from aicommons.engine.api import open_state
    from aicommons.state.lock import StateLock

    @contextlib.contextmanager
    def held():
        state = open_state(site_file, state_path)
        lock = StateLock(state, command)
        try:
            lock.acquire(timeout=timeout)
            try:
                yield state
            finally:
                lock.release()
        finally:
            state.close()
    return held()


def _append_text(text: str, entry: dict) -> str | None:
    """Fast path: insert one entry after the last item of a block-style `users:` list, touching
    nothing else. None when the layout is anything else (then ruamel does the edit)."""
    import json

    import yaml

    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None
    node = next((v for k, v in getattr(root, "value", []) if getattr(k, "value", None) == "users"), None)
    if not isinstance(node, yaml.SequenceNode) or node.flow_style or not node.value:
        return None
    lines = text.splitlines(keepends=True)
    first = lines[node.value[0].start_mark.line]
    dash = first.find("-")
    if dash < 0 or first[:dash].strip():
        return None
    last = node.value[-1]
    while isinstance(last, (yaml.MappingNode, yaml.SequenceNode)) and last.value and not last.flow_style:
        last = last.value[-1][1] if isinstance(last, yaml.MappingNode) else last.value[-1]
    end = last.end_mark  # a block node's own end runs on over following comments; a leaf's does not
    at = end.line + (1 if end.column > 0 else 0)
    if at > len(lines):
        return None
    pad = first[:dash]
    new = f"{pad}- name: {entry['name']}\n"
    if entry.get("email"):
        new += f"{pad}  email: {json.dumps(entry['email'])}\n"
    if at == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return "".join(lines[:at]) + new + "".join(lines[at:])


def _site_users(site_file: Path) -> list[User]:
    from aicommons.spec.load import load_site

    site, _ = load_site(site_file)
    return list(site.users)


def user_names(site_file: Path) -> list[str]:
    return [u.name for u in _site_users(site_file)]


def append_user(site_file: Path, user: User) -> bool:
    """Add the user to site.yaml; False if it is already there (a re-run completes provisioning)."""
    from aicommons.spec.load import load_text, read_site_text

    before = read_site_text(site_file)
    if user.name in [u.name for u in load_text(before)[0].users]:
        return False
    entry = {"name": user.name}
    if user.email:
        entry["email"] = user.email
    fast = _append_text(before, entry)
    if fast is not None:
        _check_and_write(site_file, fast, before)
    else:
        _edit_users(site_file, lambda users: users.append(entry))
    return True


def drop_user(site_file: Path, name: str) -> None:
    def change(users):
        for i, u in enumerate(list(users)):
            if isinstance(u, Mapping) and u.get("name") == name:
                del users[i]
                return
    _edit_users(site_file, change)


def require_user(site_file: Path, name: str) -> None:
    names = user_names(site_file)
    if name not in names:
        hint = f"known users: {', '.join(names[:10])}{' …' if len(names) > 10 else ''}" if names else "the site has no users"
        raise UnknownUser(f"no user {name!r} in {site_file} ({hint}); `aicommons users list` shows them")


# ---- the engine's session: resolved site, state, secrets, back ends -----------------------------

class Context:
    """What a user command works with; back ends may be injected (tests)."""

    def __init__(self, site_file: Path, *, state_path=None, backends=None, read_only: bool = False):
        from aicommons.engine.api import Session

        class _NoDriver:  # user commands on back ends never touch containers
            kind = "none"
            configures_services = False

            def list_containers(self):
                return []

            def skipped_services(self, resolved):  # the LXC driver holds no tenants in what it skips
                if resolved.site.driver.kind != "lxc":
                    return {}
                from aicommons.drivers.lxc.services import skipped_services

                return skipped_services(resolved)

        self.session = Session(site_file, state_path=state_path, driver=_NoDriver(), backends=backends,
                               target=object(), read_only=read_only)
        if backends is None and self._dials_site():  # reach the site's own servers only from inside it
            from aicommons.drivers.registry import enter_site_network, site_owner

            try:
                enter_site_network(self.session.site, site_owner(self.session.site_file))
            except BaseException:
                self.session.close()
                raise
        self.resolved: ResolvedSite = self.session.resolved
        self.secrets = self.session.secrets
        self.backends = self.session.backends

    def _dials_site(self) -> bool:
        """Does a back end talk to a server the site runs (not an `external:` one)?"""
        from aicommons.engine.api import _service_of

        eps = self.session.resolved.endpoints
        return any((ep := eps.get(_service_of(self.session, b))) is not None and not ep.external
                   for b in self.session.backends)

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def tenant(self, name: str) -> Tenant:
        try:
            return self.resolved.tenant(name)
        except KeyError:
            raise UnknownUser(f"user {name!r} has no slot in the resolved site") from None

    def tenant_secrets(self, t: Tenant) -> dict[str, str]:
        return {k: self.secrets.get(t.user, k) for k in tenant_keys(t)}


def _by(command: str, actor: str | None) -> str:
    return f"{command} (by {actor})" if actor else command


def host_only(site_file, what: str) -> None:
    """An LXC site's containers are made and changed on its host (lxc-*, the site's namespace):
    from inside one of its containers (the portal's) say so before anything is touched."""
    import os

    from aicommons.render.aicservice import IN_SITE_ENV
    from aicommons.spec import load_site

    if os.environ.get(IN_SITE_ENV) and load_site(Path(site_file))[0].driver.kind == "lxc":
        raise PermanentError(f"{what}: this portal runs inside the site's own container; an LXC site's containers "
                             "are made and changed on its host: run `aicommons` there (nothing was changed)")


def add_user(site_file: Path, name: str, email: str | None = None, *, state_path=None, driver=None,
             backends=None, out=None, lock_timeout: float = 0.0, actor: str | None = None):
    """Validate, append to site.yaml, then let the engine create exactly this user.
    actor: who asked, when not the OS user (the portal's signed-in operator), for the run history."""
    from aicommons.engine.api import apply_site

    if email is None:  # completing the provisioning of someone already in the file
        email = next((u.email for u in _site_users(site_file) if u.name == name), None)
    user = validate_new_user(name, email)
    host_only(site_file, f"users add {name}")
    # Under the site's lock from the edit to the end of the apply: a parallel `users add` waits
    # or is refused before it wrote anything, and no apply sees a half-made edit.
    with site_lock(site_file, state_path, f"users add {name}", lock_timeout) as state:
        # a user removed with --keep-data comes back with its data and its logins
        returning = any(a.user == name and a.status == "removed" for a in state.allocations())
        before = Path(site_file).read_text(encoding="utf-8")
        added = append_user(Path(site_file), user)
        try:
            result = apply_site(site_file, state_path=state_path, targets={name}, yes=True, driver=driver,
                                backends=backends, out=out, command=_by(f"users add {name}", actor))
        except AicError as exc:
            # Refused before anything was made for the user (no slot in the state): the edit is
            # undone, so site.yaml is as it was. Once a slot exists the user stays in site.yaml
            # (dropping it would make the next apply tear down what was made); the CLI says so.
            if added and not any(a.user == name for a in state.allocations()):
                _check_and_write(Path(site_file), before, Path(site_file).read_text(encoding="utf-8"))
                _say_kept(exc, f"{name} was not added: site.yaml is as it was")
            raise
        if returning and result.ok:
            set_suspended(Path(site_file), name, False, state_path=state_path, backends=backends)
    return added, result


def _say_kept(exc: AicError, what: str) -> None:
    """Add what happened to site.yaml to the error the CLI prints."""
    if isinstance(exc, SiteInvalid):
        exc.problems.append(Problem("users", what))
    elif exc.args:
        exc.args = (f"{exc.args[0]}; {what}", *exc.args[1:])


def remove_user(site_file: Path, name: str, *, lock_timeout: float = 0.0, state_path=None, **kw):
    """remove_user under the site's lock, from the site.yaml edit to the end of the apply."""
    host_only(site_file, f"users remove {name}")
    with site_lock(site_file, state_path, f"users remove {name}", lock_timeout):
        return _remove_user(site_file, name, state_path=state_path, **kw)


def _remove_user(site_file: Path, name: str, *, keep_data: bool = False, purge: bool = False, state_path=None,
                 driver=None, backends=None, out=None, target=None, actor: str | None = None):
    """Archive (unless purge) and drop the user's slices, then its container and its site.yaml entry.

    keep_data: logins are revoked and the data left in place, forgotten by the state so later
    applies leave it alone; adding the user again adopts it.
    """
    from aicommons.engine.api import apply_site, open_state

    if keep_data and purge:
        raise AicError("--keep-data and --purge contradict each other; pick one")
    site_file = Path(site_file)
    if name not in user_names(site_file) and _left_behind(site_file, name, state_path):
        # An earlier removal stopped after site.yaml was edited (a back end down): finish it.
        return apply_site(site_file, state_path=state_path, targets={name}, yes=True, driver=driver,
                          backends=backends, out=out, purge=purge, command=f"users remove {name}")
    require_user(site_file, name)
    if not keep_data:
        _refuse_if_blocked(site_file, name, state_path, backends)
        _sign_out_for_good(site_file, name, state_path, backends)
    if keep_data:
        with Context(site_file, state_path=state_path, backends=backends) as ctx:
            t = ctx.tenant(name)
            for b in ctx.backends:
                b.suspend(t)
            for addr in [a for a in ctx.session.state.applied() if a.startswith("tenant.") and a.endswith(f".{name}")]:
                ctx.session.state.forget_applied(addr)
    drop_user(site_file, name)
    result = apply_site(site_file, state_path=state_path, targets={name}, yes=True, driver=driver,
                        backends=backends, out=out, purge=purge, command=_by(f"users remove {name}", actor),
                        target=target)
    if result.ok:
        state = open_state(site_file, state_path)
        try:
            state.set_allocation_status(name, "purged" if purge else "removed")
        finally:
            state.close()
    return result


def _refuse_if_blocked(site_file: Path, name: str, state_path, backends) -> None:
    """Ask every back end what would stop the removal before anything is changed: a refusal
    leaves the user whole in site.yaml, the state and every back end, and names the cause."""
    with Context(site_file, state_path=state_path, backends=backends) as ctx:
        t = ctx.tenant(name)
        found = [f"{b.name}: {why}" for b in ctx.backends
                 for why in (b.removal_blockers(t) if callable(getattr(b, "removal_blockers", None)) else [])]
    if found:
        raise AicError(f"user {name} was not removed (nothing changed): " + "; ".join(found)
                       + f". Fix it, then run `aicommons users remove {name}` again")


def _sign_out_for_good(site_file: Path, name: str, state_path, backends) -> None:
    """A provider whose accounts no engine step owns (Authentik's come from blueprints, and a
    deleted blueprint leaves its objects) ends the person's sessions and deletes the account now."""
    with Context(site_file, state_path=state_path, backends=backends) as ctx:
        t = ctx.tenant(name)
        for b in ctx.backends:
            if callable(getattr(b, "forget", None)):
                b.forget(t)


def _left_behind(site_file: Path, name: str, state_path) -> bool:
    from aicommons.engine.api import open_state

    state = open_state(site_file, state_path)
    try:
        return any(a.startswith("tenant.") and a.endswith(f".{name}") for a in state.applied())
    finally:
        state.close()


def set_suspended(site_file: Path, name: str, suspended: bool, *, state_path=None, backends=None) -> list[str]:
    """Revoke (or restore) the user's logins in every back end; data is kept. Returns back-end names.

    Every back end is tried even when one fails; the failures are reported together (re-running
    is safe: suspend and resume are idempotent)."""
    require_user(Path(site_file), name)
    with Context(Path(site_file), state_path=state_path, backends=backends) as ctx:
        t = ctx.tenant(name)
        done, failed = [], []
        for b in ctx.backends:
            try:
                if suspended:
                    b.suspend(t)
                else:
                    b.resume(t, ctx.tenant_secrets(t))
                done.append(b.name)
            except AicError as exc:
                failed.append(f"{b.name}: {exc}")
        if done and not failed:  # what the portal and `users list` show; the back ends stay the truth
            ctx.session.state.set_meta(f"suspended.{name}", "1" if suspended else "0")
        if failed:
            verb = "suspend" if suspended else "resume"
            raise AicError(f"{verb} {name} finished in {', '.join(done) or 'no back end'} but not in: "
                           + "; ".join(failed) + f". Fix it and run `aicommons users {verb} {name}` again")
        return done


def suspended_users(state) -> set[str]:
    """Users whose last suspend/resume was a suspend (recorded by set_suspended)."""
    rows = state._read("SELECT key, value FROM meta WHERE key LIKE 'suspended.%'")
    return {k.removeprefix("suspended.") for k, v in rows if v == "1"}


def restart_user(site_file: Path, name: str, *, state_path=None, driver=None, out=None,
                 actor: str | None = None) -> None:
    """Stop and start the user's container (every app of theirs restarts), under the site's lock
    and recorded as a run like any apply."""
    from aicommons.engine.api import default_driver
    from aicommons.state.lock import StateLock

    say = (lambda line: print(line, file=out, flush=True)) if out is not None else (lambda line: None)
    host_only(site_file, f"users restart {name}")
    require_user(Path(site_file), name)
    with Context(Path(site_file), state_path=state_path, backends=[]) as ctx:
        t, state = ctx.tenant(name), ctx.session.state
        command = _by(f"users restart {name}", actor)
        lock = StateLock(state, command)
        lock.acquire()
        drv = driver if driver is not None else default_driver(ctx.session.site, ctx.session.site_file)
        run_id = state.begin_run(command)
        outcome = "failed"
        try:
            c = drv.get(t.ctid)
            if c is None:
                raise AicError(f"{name}'s container {t.ctid} does not exist yet; `aicommons users add {name}` "
                               "finishes provisioning it")
            if c.status == "running":
                say(f"stopping container {t.ctid}")
                drv.stop(t.ctid)
            say(f"starting container {t.ctid}")
            drv.start(t.ctid)
            drv.wait_ready(t.ctid)
            say(f"container {t.ctid} is running")
            outcome = "ok"
        finally:
            state.finish_run(run_id, outcome, {"ok": 1 if outcome == "ok" else 0, "failed": int(outcome != "ok")})
            lock.release()
            if driver is None and isinstance(drv, Closes):
                drv.close()


def preview_user(site_file: Path, name: str, action: str, email: str | None = None, *, state_path=None,
                 driver=None, backends=None) -> list[dict]:
    """What `users add|remove|suspend|resume NAME` will do, before it does it (nothing is changed;
    add/remove plan against a copy of site.yaml with the user added or dropped)."""
    from aicommons.engine.api import plan_site, select
    from aicommons.state.store import default_path

    site_file = Path(site_file)
    if action in ("suspend", "resume"):
        require_user(site_file, name)
        with Context(site_file, state_path=state_path, backends=backends, read_only=True) as ctx:
            verb = "revoke" if action == "suspend" else "restore"
            return [{"action": "update", "address": f"{b.name}.{name}", "reason": f"{verb} {name}'s logins; data kept"}
                    for b in ctx.backends]
    if action == "add":
        user = validate_new_user(name, email)
        if name in user_names(site_file):
            return [{"action": "no-op", "address": name, "reason": f"{name} is already in {site_file.name}; "
                     "adding completes its provisioning"}]
        text = site_file.read_text(encoding="utf-8")
        entry = {"name": user.name, "email": user.email}
        new = _append_text(text, entry)
        if new is None:
            y = _yaml()
            data = y.load(text)
            data["users"] = (data.get("users") or []) + [entry]
            buf = io.StringIO()
            y.dump(data, buf)
            new = buf.getvalue()
    elif action == "remove":
        require_user(site_file, name)
        y = _yaml()
        data = y.load(site_file.read_text(encoding="utf-8"))
        data["users"] = [u for u in data["users"] if not (isinstance(u, Mapping) and u.get("name") == name)]
        buf = io.StringIO()
        y.dump(data, buf)
        new = buf.getvalue()
    else:
        raise AicError(f"action {action!r}: use add, remove, suspend or resume")
    copy = site_file.with_name(f".{site_file.stem}.preview-{os.getpid()}.yaml")  # beside it: same key file
    copy.write_text(new, encoding="utf-8")
    try:
        plan = plan_site(copy, state_path=state_path or os.environ.get("AICOMMONS_STATE") or default_path(site_file),
                         driver=driver, backends=backends)
    finally:
        copy.unlink(missing_ok=True)
    plan = select(plan, {name})
    return [c.to_dict() for c in plan.changes if c.action != "no-op"]


def show_user(site_file: Path, name: str, *, reveal: bool = False, state_path=None) -> dict:
    """URLs and credentials the user needs; secret values redacted unless `reveal`."""
    from aicommons.ops import enroll
    from aicommons.plan.policy import login_email, login_password, tenant_credentials, user_token

    require_user(Path(site_file), name)
    with Context(Path(site_file), state_path=state_path, backends=[], read_only=True) as ctx:
        t, r = ctx.tenant(name), ctx.resolved
        s = ctx.tenant_secrets(t)
        site_key = ctx.secrets.get(SITE_SCOPE, "qdrant_api_key")
        made_up = ctx.secrets.throwaway  # not applied yet: the read-only store made these up

        def hide(v: str, scope: str = t.user, *keys: str) -> str:
            if any((scope, k) in made_up for k in keys):
                return NOT_YET  # no one's credential: never shown as one
            return v if reveal else REDACTED
        ep = r.endpoints

        def hp(svc):
            e = ep[svc]
            return e.host, next(iter(e.ports.values()))

        info: dict = {"user": t.user, "email": t.email, "ip": t.ip, "ctid": t.ctid,
                      "urls": {app: f"https://{h}" for app, h in t.hosts.items()}}
        if ctx.secrets.version(t.user, enroll.TOKEN_KEY):  # made by `users add`/`users invite`
            token = ctx.secrets.get(t.user, enroll.TOKEN_KEY)
            info["sign_in"] = {"invitation": enroll.link(r, token) if reveal else REDACTED,
                               "note": f"one use, {r.site.identity.invitation_hours} h from when it was made"}
        if "postgres" in ep:
            host, port = hp("postgres")
            info["postgres"] = {"host": host, "port": port, "user": t.postgres_role, "databases": list(t.databases),
                                "password": hide(s["postgres_password"], t.user, "postgres_password")}
        if "redis" in ep:
            host, port = hp("redis")
            info["redis"] = {"host": host, "port": t.redis_port or port, "user": t.redis_user, "key_prefix": t.redis_prefix,
                             "channels": f"{t.redis_prefix}*", "db": t.redis_db or 0,
                             "password": hide(s["redis_password"], t.user, "redis_password")}
        if "qdrant" in ep:
            host, port = hp("qdrant")
            info["qdrant"] = {"url": f"http://{host}:{port}", "collections": list(t.qdrant_collections),
                              "api_key": hide(user_token(t, site_key), SITE_SCOPE, "qdrant_api_key")}
        store = next((x for x in ("garage", "minio") if x in ep), None)
        if store and t.buckets:
            kid, sec = tenant_credentials(s)
            e = ep[store]
            info["s3"] = {"endpoint": f"http://{e.host}:{e.ports.get('s3', next(iter(e.ports.values())))}",
                          "buckets": list(t.buckets), "access_key_id": kid if (t.user, "s3_access_key") not in made_up
                          else NOT_YET, "secret_access_key": hide(sec, t.user, "s3_access_key", "s3_secret_key")}
        if "langfuse" in ep:
            host, port = hp("langfuse")
            info["langfuse"] = {"url": f"http://{host}:{port}", "trace_tags": [f"user:{t.user}"],
                                "user_id": t.user}
        if t.gateway and "gateway" in ep:
            from aicommons.plan.models import gateway_routes
            from aicommons.plan.policy import gateway_key

            host, port = hp("gateway")
            route = next((x.host for x in r.routes if x.service == "gateway"), None)
            info["gateway"] = {"url": f"http://{host}:{port}/v1", **({"public_url": f"https://{route}/v1"} if route else {}),
                               "models": sorted(gateway_routes(r)),
                               "key": hide(gateway_key(t.user, s["gateway_key"]), t.user, "gateway_key"),
                               "app_label": "append ~APP to the key (e.g. ~notebook) to see that app's usage apart"}
            if "gateway" in r.undeployed:
                info["gateway"]["note"] = f"not deployed here: {r.undeployed['gateway']}"
        # The apps that cannot trust the site's sign-in have an account made for the person at
        # apply time (render/compose.py n8n owner, render/native.py first_account): its login.
        logins = {"n8n": "n8n_owner_password", "flowise": "flowise_admin_password"}
        info["app_logins"] = {app: {"url": f"https://{t.hosts[app]}", "email": login_email(t, r.site.domain),
                                    "password": hide(login_password(s[key]), t.user, key)}
                              for app, key in logins.items() if app in t.apps and app in t.hosts and key in s}
        info["app_secrets"] = {k: hide(v, t.user, k) for k, v in s.items()
                               if k not in ("postgres_password", "redis_password", "s3_access_key", "s3_secret_key",
                                            "gateway_key")}
        return info


def audit_site(site_file: Path, *, state_path=None, backends=None
               ) -> tuple[list[AuditCheck], list[str], list[str]]:
    """Every back end's cross-user probes: (checks, back ends that could not be audited, warnings)."""
    from aicommons.errors import TemporaryError

    with Context(Path(site_file), state_path=state_path, backends=backends) as ctx:
        tenants = ctx.resolved.tenants
        secrets = {t.user: ctx.tenant_secrets(t) for t in tenants}
        # Gaps are back ends that could not be built or reached; a service the driver does not run
        # holds no tenant slices (a warning, not a gap), and plan notes are no back end's slices.
        checks, skipped = [], list(ctx.session.backend_notes) if backends is None else []
        for b in ctx.backends:
            try:
                checks += b.audit(tenants, secrets)
                if isinstance(b, ServiceBounded):  # the "service" section: bounds on one tenant
                    checks += b.service_audit(tenants, secrets)
            except (TemporaryError, OSError) as exc:
                skipped.append(f"{b.name}: {exc}")
        warnings = [w for b in ctx.backends for w in getattr(b, "warnings", [])] + (
            list(ctx.session.skip_notes) if backends is None else [])
        if backends is None:
            checks += host_checks(ctx.session.site, Path(site_file), [c.ctid for c in ctx.resolved.containers],
                                  list(ctx.resolved.containers), resolved=ctx.resolved)
        record_audit(ctx.session.state, checks, skipped, warnings)
        return checks, skipped, warnings


def host_checks(site, site_file: Path, ctids: list[int], containers: list | None = None,
                resolved=None) -> list[AuditCheck]:
    """The "host" section: from inside the site's containers, root tries the host (drivers that can);
    each running container's limits, read back from the kernel, are the plan's (`containers`); and
    the "network" section: each door the site's own filter shuts, tried from every container."""
    from aicommons.drivers.base import AuditsHost, AuditsNetwork, ReadsLimits
    from aicommons.engine.api import default_driver

    if site.driver.kind != "lxc":  # Proxmox: its template makes unprivileged containers (drivers/proxmox)
        return []
    driver = default_driver(site, site_file)
    if not isinstance(driver, AuditsHost):  # the file-backed fake world has no host to probe
        return []
    out = [_host_check(p, "host") for p in driver.audit_host(ctids)]
    if isinstance(driver, AuditsNetwork) and resolved is not None:
        out += [_host_check(p, "network") for p in driver.audit_network(resolved)]
    if isinstance(driver, ReadsLimits) and containers:  # a bound on what one container can take
        out += [AuditCheck("host", f"CT {r.ctid}", "host", f"limit {r.key}", "deny", "deny" if r.ok else "allow",
                           f"wanted {r.wanted}, found {r.found}", section="service")
                for r in driver.read_limits(containers)]
    return out


def _host_check(p, backend: str) -> AuditCheck:
    return AuditCheck(backend, f"CT {p.ctid} {p.actor}", backend, p.probe, "deny" if p.expect_refused else "allow",
                      "error" if p.refused is None else ("deny" if p.refused else "allow"), p.detail)


def record_audit(state, checks: list[AuditCheck], skipped: list[str], warnings: list[str]) -> None:
    """Keep the last audit's verdict in the state (no secret: actors, targets, resources only)."""
    import json
    import time
    from dataclasses import asdict

    leaks = [asdict(c) for c in checks if not c.ok]
    state.set_meta("audit.last", json.dumps({
        "at": time.time(), "checks": len(checks), "leaks": leaks, "skipped": skipped, "warnings": warnings,
        "ok": bool(checks) and not leaks and not skipped}))


def last_audit(state) -> dict | None:
    import json

    raw = state.meta("audit.last")
    return json.loads(raw) if raw else None
