"""Who is asking and may they: the identity, operator-only routes, CSRF on every change."""

from __future__ import annotations

from fastapi import Request

from aicommons.portal.errors import Forbidden, NotSignedIn
from aicommons.portal.identity import Identity, csrf_ok, identify

SAFE = ("GET", "HEAD", "OPTIONS")


def identity(request: Request) -> Identity:
    app = request.app
    peer = request.client.host if request.client else None
    ident = identify(peer, request.headers, request.cookies, app.state.cfg, app.state.session_key)
    if ident is None:
        raise NotSignedIn("not signed in: open the portal through the site's sign-in (portal.<domain>), "
                          "or sign in with the operator token")
    return ident


async def acting(request: Request) -> Identity:
    """A signed-in person whose change carries the CSRF token of their own page."""
    ident = identity(request)
    if request.method not in SAFE:
        sent = request.headers.get("x-csrf-token")
        if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            field = (await request.form()).get("csrf")
            sent = field if isinstance(field, str) else None  # an uploaded file is no token
        if not csrf_ok(ident, request.app.state.session_key, sent):
            raise Forbidden("the request lacks this page's CSRF token; reload the page and try again")
    return ident


async def operator(request: Request) -> Identity:
    ident = await acting(request)
    if not ident.operator:
        raise Forbidden(f"{ident.name} is not an operator of this site "
                        f"(operators are in the {request.app.state.cfg.operator_group!r} group)")
    return ident
