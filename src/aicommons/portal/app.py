"""The portal's app factory: FastAPI with server-rendered pages (Jinja2), a JSON API for
everything the pages do, and the site view and job runner they share."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from aicommons.errors import AicError
from aicommons.plan import identity
from aicommons.portal.config import PortalConfig
from aicommons.portal.errors import http_status
from aicommons.portal.identity import SigninLimiter
from aicommons.portal.jobs import Jobs
from aicommons.portal.site import SiteView

HERE = Path(__file__).parent
PORTAL_SCOPE = "portal"  # secrets: admin_token (the operator's sign-in), session_key (cookies, CSRF)


def _redactor(view: SiteView, secrets):
    from aicommons.engine.api import external_secrets
    from aicommons.engine.report import Redactor

    return Redactor(secrets, external_secrets(view.resolved().site, view.site_file))


def create_app(cfg: PortalConfig, *, driver=None) -> FastAPI:
    view = SiteView(cfg, driver=driver)
    secrets = view.secrets()
    session_key = secrets.get(PORTAL_SCOPE, "session_key")  # generated once, kept encrypted in the state

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

        sweeper = asyncio.create_task(view.keep_fresh())
        yield
        sweeper.cancel()
        view.close()

    # /openapi.json only: FastAPI's /docs and /redoc pages would load their scripts from a CDN.
    app = FastAPI(title="aicommons portal", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Each person's workbench and the operator's console; every action goes through "
                              "the same service functions as the `aicommons` command.")
    app.state.cfg = cfg
    app.state.view = view
    app.state.jobs = Jobs(_redactor(view, secrets))
    app.state.session_key = session_key
    app.state.signin_limiter = SigninLimiter()
    app.state.admin_token = (lambda: secrets.get(PORTAL_SCOPE, "admin_token")) if cfg.admin_token else None
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["site_name"] = lambda: view.resolved().site.name
    templates.env.globals["sign_out_url"] = lambda: identity.sign_out_url(identity.sign_in(view.resolved()))
    app.state.templates = templates
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def timing(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.1f}"
        response.headers["Content-Security-Policy"] = ("default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                       "img-src 'self' data:; frame-ancestors 'none'")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(AicError)
    async def aic_error(request: Request, exc: AicError):
        code = http_status(exc)
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse({"error": str(exc)}, status_code=code)
        from aicommons.portal.routes.pages import render_error

        return render_error(request, code, str(exc))

    # On the event loop itself, needing no worker thread: it answers while every back end hangs.
    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return HTMLResponse("ok")

    from aicommons.portal.routes import api, invite, pages

    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(invite.router)
    return app
