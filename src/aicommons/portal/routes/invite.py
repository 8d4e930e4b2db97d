"""`/invite/{token}`: a new person sets their password (ops/enroll.py), then signs in.

Reached without signing in (the person has no password yet): Traefik routes the portal's
`/invite/` without forward-auth (catalog portal.yaml `public_paths`). The token in the path is
the whole credential; it works once and expires (identity.invitation_hours).
"""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from aicommons.errors import AicError
from aicommons.ops import enroll

router = APIRouter(include_in_schema=False)
UNKNOWN = "This invitation is unknown, already used or expired. Ask an operator for a new one."


def _ctx(request: Request):
    from aicommons.ops.users import Context

    cfg = request.app.state.cfg
    return Context(cfg.site_file, state_path=cfg.state_path)


def _who(request: Request, token: str) -> str | None:
    with _ctx(request) as ctx:
        return enroll.invitee(ctx, token)


def _redeem(request: Request, token: str, password: str) -> str:
    with _ctx(request) as ctx:
        return enroll.redeem(ctx, token, password)


def _form(request: Request, who: str | None, error: str = "", status: int = 200):
    return request.app.state.templates.TemplateResponse(
        request, "invite.html", {"me": None, "who": who, "error": error, "min": enroll.MIN_PASSWORD,
                                 "refresh": 0}, status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})  # the token is in the URL


@router.get("/invite/{token}")
async def invitation(request: Request, token: str):
    who = await run_in_threadpool(_who, request, token)
    return _form(request, who, "" if who else UNKNOWN, 200 if who else 404)


@router.post("/invite/{token}")
async def set_password(request: Request, token: str, password: str = Form(...), again: str = Form(...)):
    who = await run_in_threadpool(_who, request, token)
    if who is None:
        return _form(request, None, UNKNOWN, 404)
    if password != again:
        return _form(request, who, "The two passwords differ.", 400)
    try:
        where = await run_in_threadpool(_redeem, request, token, password)
    except AicError as exc:
        return _form(request, who, str(exc), 400)
    return RedirectResponse(where, status_code=303)
