"""Server-rendered pages and the fragments they refresh in place (no build step, no SPA)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from aicommons.portal import views
from aicommons.portal.identity import (
    COOKIE,
    SESSION_SECONDS,
    Identity,
    client_key,
    csrf_token,
    over_https,
    session_cookie,
)
from aicommons.portal.routes.deps import identity, operator

router = APIRouter(include_in_schema=False)


def _page(request: Request, name: str, ident: Identity | None, status: int = 200, **ctx) -> HTMLResponse:
    app = request.app
    csrf = csrf_token(ident, app.state.session_key) if ident else ""
    return app.state.templates.TemplateResponse(
        request, name, {"me": ident, "csrf": csrf, "refresh": app.state.cfg.refresh_seconds, **ctx},
        status_code=status)


def render_error(request: Request, code: int, message: str) -> HTMLResponse:
    signin = code == 401 and request.app.state.cfg.admin_token
    return _page(request, "error.html", None, status=code, code=code, message=message, signin=signin)


@router.get("/")
def home(ident: Identity = Depends(identity)):
    return RedirectResponse("/console" if ident.operator and ident.via == "token" else "/me", status_code=303)


@router.get("/me")
async def me(request: Request, ident: Identity = Depends(identity)):
    view = request.app.state.view
    data = views.person(view, ident.name, await view.status())
    return _page(request, "person.html", ident, w=data)


@router.get("/fragments/me")
async def me_fragment(request: Request, ident: Identity = Depends(identity)):
    view = request.app.state.view
    return _page(request, "_workbench.html", ident, w=views.person(view, ident.name, await view.status()))


async def _usage_of(request: Request, read):
    """The gateway's usage through `read(conninfo, default budget)` in a worker thread; None with
    the reason when the site has no gateway."""
    import asyncio

    from aicommons.gateway.site import NoGateway, conninfo_from

    view = request.app.state.view
    r = view.resolved()
    try:
        conninfo = conninfo_from(r, view.secrets().get, view.site_file.resolve().parent)
    except NoGateway as exc:
        return None, str(exc)
    return await asyncio.to_thread(read, conninfo, r.site.gateway.budget), ""


@router.get("/fragments/my-usage")
async def my_usage_fragment(request: Request, ident: Identity = Depends(identity)):
    from aicommons.gateway.config import utc_now
    from aicommons.gateway.usage import standing

    u, why = await _usage_of(request, lambda c, b: standing(c, ident.name, b, utc_now()).to_dict())
    return _page(request, "_my_usage.html", ident, u=u, why=why)


@router.get("/fragments/usage")
async def usage_fragment(request: Request, ident: Identity = Depends(operator)):
    from aicommons.gateway.config import utc_now
    from aicommons.gateway.usage import site_usage

    u, why = await _usage_of(request, lambda c, _: views.usage_chart(site_usage(c, utc_now(), 30, "day")))
    return _page(request, "_usage.html", ident, u=u, why=why)


@router.get("/console")
async def console(request: Request, ident: Identity = Depends(operator)):
    view = request.app.state.view
    st = await view.status()
    return _page(request, "console.html", ident, health=views.health(st, view.sweep_ms),
                 users=views.users(view, st),
                 backups=views.backups(view), audit=views.audit(view), jobs=request.app.state.jobs.recent(8))


@router.get("/fragments/health")
async def health_fragment(request: Request, ident: Identity = Depends(operator)):
    view = request.app.state.view
    return _page(request, "_health.html", ident, health=views.health(await view.status(), view.sweep_ms))


@router.get("/fragments/users")
async def users_fragment(request: Request, ident: Identity = Depends(operator)):
    view = request.app.state.view
    return _page(request, "_users.html", ident, users=views.users(view, await view.status()))


@router.get("/fragments/backups")
def backups_fragment(request: Request, ident: Identity = Depends(operator)):
    return _page(request, "_backups.html", ident, backups=views.backups(request.app.state.view))


@router.get("/fragments/audit")
def audit_fragment(request: Request, ident: Identity = Depends(operator)):
    return _page(request, "_audit.html", ident, audit=views.audit(request.app.state.view))


@router.get("/signin")
def signin_page(request: Request):
    return _page(request, "signin.html", None, error=None)


@router.post("/signin")
def signin(request: Request, token: str = Form(...)):
    """The local operator token (sites without SSO): a signed session cookie, never the token."""
    get, cfg, limiter = request.app.state.admin_token, request.app.state.cfg, request.app.state.signin_limiter
    peer = request.client.host if request.client else None
    who = client_key(peer, request.headers, cfg)
    wait = limiter.retry_after(who)
    if wait > 0:
        busy = _page(request, "signin.html", None, status=429,
                     error=f"Too many failed sign-ins; try again in {int(wait) + 1} seconds.")
        busy.headers["Retry-After"] = str(int(wait) + 1)
        return busy
    if get is None or not hmac.compare_digest(token.strip(), get()):
        limiter.failed(who)
        return _page(request, "signin.html", None, status=401, error="That is not this site's operator token.")
    resp = RedirectResponse("/console", status_code=303)
    resp.set_cookie(COOKIE, session_cookie(request.app.state.session_key), max_age=SESSION_SECONDS,
                    httponly=True, samesite="strict", secure=over_https(request.url.scheme, peer, request.headers, cfg))
    return resp


@router.post("/signout")
def signout(request: Request):
    resp = RedirectResponse("/signin", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp
