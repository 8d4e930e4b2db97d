"""The JSON API (described at /openapi.json): everything the pages do. Reads return what the pages show;
changes start a job and return it (`GET /api/jobs/{id}` and `/events` follow its progress)."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from aicommons.errors import AicError
from aicommons.portal import views
from aicommons.portal.errors import Forbidden
from aicommons.portal.identity import Identity
from aicommons.portal.routes.deps import acting, identity, operator

router = APIRouter(prefix="/api", tags=["api"])


class NewUser(BaseModel):
    name: str
    email: str | None = None


class Preview(BaseModel):
    action: Literal["add", "remove", "suspend", "resume"]
    name: str
    email: str | None = None


class Removal(BaseModel):
    keep_data: bool = False
    purge: bool = False


class Restore(BaseModel):
    user: str


def _view(request: Request):
    return request.app.state.view


def _cfg(request: Request):
    return request.app.state.cfg


def _start(request: Request, ident: Identity, kind: str, title: str, fn, subject: str | None = None) -> dict:
    view = _view(request)

    def run(out):
        try:
            return fn(out)
        finally:
            view.invalidate_status()  # the next read sweeps again: the change shows at once

    return request.app.state.jobs.start(kind, title, ident.name, run, subject=subject).to_dict()


def _actor(ident: Identity) -> str:
    """Who, in the run history: the signed-in name, or the operator token's session."""
    return f"{ident.name} via portal" if ident.via == "sso" else "operator token via portal"


def _result(result, what: str):
    if not result.ok:
        raise AicError(f"{what} did not finish; nothing done is lost. Fix the cause and run it again")


# ---- the person's own workbench ------------------------------------------------------------

def _gateway(request: Request):
    """(the gateway database's conninfo, the site's default budget); NoGateway (404) without one."""
    from aicommons.gateway.site import conninfo_from

    view = _view(request)
    r = view.resolved()
    return conninfo_from(r, view.secrets().get, view.site_file.resolve().parent), r.site.gateway.budget


@router.get("/me/usage", summary="My model usage against my budget (this window), per model and app")
async def my_usage(request: Request, ident: Identity = Depends(identity)):
    from aicommons.gateway.config import utc_now
    from aicommons.gateway.usage import standing

    conninfo, budget = _gateway(request)
    return (await asyncio.to_thread(standing, conninfo, ident.name, budget, utc_now())).to_dict()


@router.get("/usage", summary="Everyone's model usage over time (per hour or day) and per person x model x app")
async def site_usage(request: Request, days: int = 30, bucket: Literal["hour", "day"] = "day",
                     ident: Identity = Depends(operator)):
    from aicommons.gateway.config import utc_now
    from aicommons.gateway.usage import site_usage as usage_of

    conninfo, _ = _gateway(request)
    return await asyncio.to_thread(usage_of, conninfo, utc_now(), days, bucket)


@router.get("/me", summary="My workbench: apps with live state, container use, last backup")
async def me(request: Request, ident: Identity = Depends(identity)):
    view = _view(request)
    data = views.person(view, ident.name, await view.status())
    return {"identity": {"name": ident.name, "operator": ident.operator, "via": ident.via}, "workbench": data}


@router.post("/me/credentials", summary="Reveal my credentials (never shown unless asked)")
def my_credentials(request: Request, ident: Identity = Depends(acting)):
    from aicommons.ops.users import show_user

    cfg = _cfg(request)
    return show_user(cfg.site_file, ident.name, reveal=True, state_path=cfg.state_path)


@router.post("/me/restart", summary="Restart my workbench (my container and every app in it)")
def my_restart(request: Request, ident: Identity = Depends(acting)):
    from aicommons.ops.users import restart_user

    cfg = _cfg(request)
    return _start(request, ident, "users restart", f"restart {ident.name}'s workbench",
                  lambda out: restart_user(cfg.site_file, ident.name, state_path=cfg.state_path, out=out,
                                           actor=_actor(ident)), subject=ident.name)


@router.get("/jobs/{job_id}", summary="A job's progress (lines from `since`)")
def job(job_id: int, request: Request, since: int = 0, ident: Identity = Depends(identity)):
    return _job(request, job_id, ident).to_dict(since)


def _job(request: Request, job_id: int, ident: Identity):
    j = request.app.state.jobs.get(job_id)
    if j is None or not (ident.operator or j.subject == ident.name):
        raise Forbidden(f"no job {job_id} of yours")
    return j


@router.get("/jobs/{job_id}/events", summary="A job's progress as server-sent events")
async def job_events(job_id: int, request: Request, ident: Identity = Depends(identity)):
    j = _job(request, job_id, ident)

    async def stream():
        sent = 0
        while True:
            lines = j.lines[sent:]
            for line in lines:
                yield f"data: {json.dumps({'line': line})}\n\n"
            sent += len(lines)
            if j.status != "running" and sent >= len(j.lines):
                yield f"event: end\ndata: {json.dumps({'status': j.status})}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.2)

    return StreamingResponse(stream(), media_type="text/event-stream")


# ---- the operator's console ---------------------------------------------------------------

@router.get("/status", summary="Site health: every service by its own protocol (as `aicommons status --json`)")
async def status(request: Request, fresh: bool = False, ident: Identity = Depends(operator)):
    view = _view(request)
    return views.health(await view.status(fresh=fresh), view.sweep_ms)


@router.get("/users", summary="Every user with slot, container, apps, resource use and last backup")
async def users(request: Request, ident: Identity = Depends(operator)):
    view = _view(request)
    return views.users(view, await view.status())


@router.get("/users/{name}", summary="One user's workbench, as they see it")
async def user(name: str, request: Request, ident: Identity = Depends(operator)):
    from aicommons.ops.users import UnknownUser

    view = _view(request)
    data = views.person(view, name, await view.status())
    if data is None:
        raise UnknownUser(f"no user {name!r} on this site")
    return data


@router.post("/users/{name}/credentials", summary="Reveal a user's credentials (operator)")
def user_credentials(name: str, request: Request, ident: Identity = Depends(operator)):
    from aicommons.ops.users import show_user

    cfg = _cfg(request)
    return show_user(cfg.site_file, name, reveal=True, state_path=cfg.state_path)


@router.post("/users/preview", summary="What adding, removing, suspending or resuming a user will do")
def preview(body: Preview, request: Request, ident: Identity = Depends(operator)):
    from aicommons.ops.users import preview_user

    cfg = _cfg(request)
    return {"action": body.action, "name": body.name,
            "changes": preview_user(cfg.site_file, body.name, body.action, body.email, state_path=cfg.state_path)}


@router.post("/users", summary="Add a user (as `aicommons users add`)")
def add(body: NewUser, request: Request, ident: Identity = Depends(operator)):
    from aicommons.ops.users import add_user, validate_new_user

    cfg = _cfg(request)
    validate_new_user(body.name, body.email)  # a bad name is refused now, not in the job

    def run(out):
        added, result = add_user(cfg.site_file, body.name, body.email, state_path=cfg.state_path, out=out,
                                 actor=_actor(ident))
        _result(result, f"adding {body.name}")
        from aicommons.ops.enroll import invite_user

        # The link is a secret (job output is redacted): operators see it in the user's details.
        if added and invite_user(cfg.site_file, body.name, state_path=cfg.state_path):
            return f"user {body.name} is ready; their invitation link is in their details (users show)"
        return f"user {body.name} is ready"

    return _start(request, ident, "users add", f"add {body.name}", run, subject=body.name)


@router.post("/users/{name}/suspend", summary="Revoke a user's logins; data is kept")
def suspend(name: str, request: Request, ident: Identity = Depends(operator)):
    return _suspend(request, ident, name, True)


@router.post("/users/{name}/resume", summary="Restore a user's logins")
def resume(name: str, request: Request, ident: Identity = Depends(operator)):
    return _suspend(request, ident, name, False)


def _suspend(request: Request, ident: Identity, name: str, suspended: bool) -> dict:
    from aicommons.ops.users import require_user, set_suspended

    cfg = _cfg(request)
    require_user(cfg.site_file, name)
    verb = "suspend" if suspended else "resume"

    def run(out):
        done = set_suspended(cfg.site_file, name, suspended, state_path=cfg.state_path)
        return f"{name} {verb}ed in: {', '.join(done) or 'no back ends'}"

    return _start(request, ident, f"users {verb}", f"{verb} {name}", run, subject=name)


@router.post("/users/{name}/remove", summary="Remove a user (archived first unless purge)")
def remove(name: str, body: Removal, request: Request, ident: Identity = Depends(operator)):
    from aicommons.ops.users import remove_user, require_user

    cfg = _cfg(request)
    require_user(cfg.site_file, name)
    if body.keep_data and body.purge:
        raise AicError("keep_data and purge contradict each other; pick one")

    def run(out):
        result = remove_user(cfg.site_file, name, keep_data=body.keep_data, purge=body.purge,
                             state_path=cfg.state_path, out=out, actor=_actor(ident))
        _result(result, f"removing {name}")
        return f"user {name} removed"

    return _start(request, ident, "users remove", f"remove {name}", run, subject=name)


@router.post("/users/{name}/restart", summary="Restart a user's workbench")
def restart(name: str, request: Request, ident: Identity = Depends(operator)):
    from aicommons.ops.users import restart_user

    cfg = _cfg(request)
    return _start(request, ident, "users restart", f"restart {name}'s workbench",
                  lambda out: restart_user(cfg.site_file, name, state_path=cfg.state_path, out=out,
                                           actor=_actor(ident)), subject=name)


@router.get("/plan", summary="The pending plan for the whole site (as `aicommons plan`)")
def plan(request: Request, ident: Identity = Depends(operator)):
    from aicommons.engine.api import plan_site

    cfg = _cfg(request)
    p = plan_site(cfg.site_file, state_path=cfg.state_path)
    return {"counts": p.counts(), "steps": len(p.steps), "notes": p.notes,
            "changes": [c.to_dict() for c in p.changes if c.action != "no-op"]}


@router.post("/apply", summary="Apply the site (as `aicommons apply --yes`), progress streamed")
def apply(request: Request, ident: Identity = Depends(operator)):
    from aicommons.engine.api import apply_site

    cfg = _cfg(request)

    def run(out):
        result = apply_site(cfg.site_file, state_path=cfg.state_path, yes=True, out=out,
                            command=f"apply (by {_actor(ident)})")
        _result(result, "apply")
        return "the site matches the plan"

    return _start(request, ident, "apply", "apply the site", run)


@router.get("/backups", summary="Complete backups, newest first")
def backups(request: Request, ident: Identity = Depends(operator)):
    return views.backups(_view(request))


@router.post("/backups/{backup_id}/verify", summary="Check checksums and restore into scratch databases")
def verify(backup_id: str, request: Request, ident: Identity = Depends(operator)):
    from aicommons.ops.backup.run import verify_backup
    from aicommons.ops.site import backup_context, fetch_if_remote

    cfg, view = _cfg(request), _view(request)

    def run(out):
        resolved = view.resolved()
        src, repo = backup_context(cfg.site_file, resolved, targets=cfg.targets)
        fetch_if_remote(repo, backup_id, resolved)
        problems = verify_backup(repo, backup_id, src)
        for p in problems:
            print(f"problem: {p}", file=out)
        if problems:
            raise AicError(f"backup {backup_id} has {len(problems)} problem(s)")
        return f"backup {backup_id} is good: checksums match and it restores"

    return _start(request, ident, "backup verify", f"verify {backup_id}", run)


@router.post("/backups/{backup_id}/restore", summary="Restore one user's data from a backup")
def restore(backup_id: str, body: Restore, request: Request, ident: Identity = Depends(operator)):
    from aicommons.ops.backup.run import restore_backup
    from aicommons.ops.site import backup_context, check_user, fetch_if_remote

    cfg, view = _cfg(request), _view(request)
    check_user(view.resolved(), body.user)

    def run(out):
        resolved = view.resolved()
        src, repo = backup_context(cfg.site_file, resolved, targets=cfg.targets)
        fetch_if_remote(repo, backup_id, resolved)
        done = restore_backup(resolved, repo, backup_id, src, user=body.user,
                              step=lambda w: print(f"  {w}", file=out, flush=True))
        return f"restored {len(done)} items of {body.user} from {backup_id}"

    return _start(request, ident, "backup restore", f"restore {body.user} from {backup_id}", run,
                  subject=body.user)


@router.get("/audit", summary="The last isolation audit")
def audit(request: Request, ident: Identity = Depends(operator)):
    return views.audit(_view(request))


@router.post("/audit", summary="Run the isolation audit now (as `aicommons audit isolation`)")
def run_audit(request: Request, ident: Identity = Depends(operator)):
    from aicommons.ops.users import audit_site

    cfg = _cfg(request)

    def run(out):
        checks, skipped, warnings = audit_site(cfg.site_file, state_path=cfg.state_path)
        leaks = [c for c in checks if not c.ok]
        for c in leaks:
            print(f"LEAK {c.backend}: {c.actor} -> {c.target} {c.resource}", file=out)
        for s in skipped:
            print(f"not audited: {s}", file=out)
        if leaks or skipped or not checks:
            raise AicError(f"{len(checks)} checks: {len(leaks)} leak(s), {len(skipped)} not audited")
        return f"{len(checks)} checks: isolation holds"

    return _start(request, ident, "audit isolation", "isolation audit", run)


@router.get("/jobs", summary="Recent jobs")
def jobs(request: Request, ident: Identity = Depends(operator)):
    return [j.to_dict(len(j.lines)) for j in request.app.state.jobs.recent()]
