"""The gateway's HTTP side: OpenAI-compatible routes proxied to the model servers.

Streaming is passed through as it arrives: each server-sent event is forwarded when its blank
line is read, never buffered to the end. Upstream, a streamed request always asks for
`stream_options.include_usage` (the last event then carries the real usage, which is what is
counted); that extra event is dropped when the client did not ask for it.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import itertools
import json
import logging
import sys
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from aicommons.gateway import accounting as acc
from aicommons.gateway import estimate
from aicommons.gateway.config import GatewayConfig
from aicommons.gateway.metrics import Counters, render_metrics
from aicommons.gateway.upstream import PlainClient, UpstreamError
from aicommons.gateway.upstream import post as httpx_post

log = logging.getLogger("aicommons.gateway")

# httpcore 1.0.9 (httpcore/_synchronization.py, current_async_library) tries `import sniffio` on
# every request; without sniffio installed the failed import is not cached and scans sys.path each
# time (a seventh of the gateway's CPU at 50 streams). Record the absence once.
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

# httpcore's pool assigns queued requests by scanning every connection for each request
# (connection_pool.py, _assign_requests_to_connections): quadratic in a burst of streams. A few
# independent clients keep each scan short.
CLIENT_SHARDS = 8


def error(status: int, message: str, type_: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    """OpenAI's error shape: apps show `error.message` to the person."""
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status)


def _events(buf: bytearray):
    """Complete server-sent events at the front of `buf` (removed from it), each with its blank line."""
    while True:
        i, j = buf.find(b"\n\n"), buf.find(b"\r\n\r\n")
        if i < 0 and j < 0:
            return
        end = (j + 4) if (i < 0 or 0 <= j < i) else (i + 2)
        event = bytes(buf[:end])
        del buf[:end]
        yield event


def _data(event: bytes) -> bytes | None:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def create_app(cfg: GatewayConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    pool = acc.Pool(cfg.conninfo, cfg.pool_size)
    admissions = acc.Admissions(pool)
    counters = Counters()
    clients: list[httpx.AsyncClient] = []
    plain = PlainClient(read_timeout=cfg.upstream_timeout)  # plain-HTTP model servers (see upstream.py)
    turn = itertools.count()
    settling: set[asyncio.Task] = set()  # settlements still running (awaited at shutdown)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.open()
        tls = httpx.create_ssl_context()  # one CA bundle load for every shard
        clients[:] = [httpx.AsyncClient(transport=transport, verify=tls,
                                        timeout=httpx.Timeout(cfg.upstream_timeout, connect=10.0),
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))
                      for _ in range(CLIENT_SHARDS)]
        # What exists now (imports, FastAPI's and pydantic's models) lives as long as the process:
        # kept out of the collector, a full collection no longer walks it while every stream waits
        # (one costs ~19 ms of CPU here, 84,000 objects; measured 52 ms of wall time at 50 streams).
        gc.collect()
        gc.freeze()
        yield
        if settling:
            await asyncio.gather(*settling, return_exceptions=True)
        for c in clients:
            await c.aclose()
        await plain.aclose()
        await pool.close()

    app = FastAPI(title="aicommons model gateway", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    if cfg.cors_origin_regex:  # a page of the site's apps may call with a key; no cookies are involved
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origin_regex=cfg.cors_origin_regex, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-aicommons-app"], max_age=600)

    async def caller_of(request: Request) -> acc.Caller | None:
        return await acc.authenticate(pool, request.headers.get("authorization"),
                                      request.headers.get("x-aicommons-app"), cfg.budget)

    def unauthorized() -> JSONResponse:
        counters.rejected["unauthorized"] += 1
        return error(401, "Invalid or revoked API key: use the key `aicommons users show NAME --secrets` gives "
                          "(gateway_key); a suspended or removed person's key stops working.",
                     "invalid_request_error", "invalid_api_key")

    @app.get("/v1/models")
    async def models(request: Request):
        if await caller_of(request) is None:
            return unauthorized()
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "aicommons"}
                                           for m in sorted(cfg.routes)]}

    @app.get("/metrics")
    async def metrics():
        async with pool.conn() as c:
            text = await render_metrics(c, counters, cfg.clock())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    async def proxy(request: Request, path: str, kind: str):
        auth = request.headers.get("authorization")
        if acc.parse_key(auth) is None:
            return unauthorized()
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return error(400, "The request body is not a JSON object.", "invalid_request_error")
        model = body.get("model")
        if not isinstance(model, str) or model not in cfg.routes:
            return error(404, f"The model {model!r} does not exist here; GET /v1/models lists this site's models "
                              f"({', '.join(sorted(cfg.routes)) or 'none'}).", "invalid_request_error",
                         "model_not_found", "model")
        stream = kind != "embeddings" and bool(body.get("stream"))
        if kind == "embeddings":
            prompt_est, max_tokens = estimate.text_prompt(body, "input"), 0
        else:
            prompt_est = estimate.chat_prompt(body) if kind == "chat" else estimate.text_prompt(body, "prompt")
            field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
            asked = body.get(field)
            if asked is None:  # capped, so that what is reserved holds
                asked = body["max_tokens"] = cfg.default_max_tokens
            if not isinstance(asked, int) or isinstance(asked, bool) or asked < 1:
                return error(400, f"{field} must be a whole number of at least 1.", "invalid_request_error",
                             "invalid_value", field)
            max_tokens = body["max_tokens"] = asked  # the cap the model server enforces (llama-server reads max_tokens)
            n = body.get("n", 1)
            if isinstance(n, int) and n > 1:
                max_tokens *= n
        price = cfg.price(model)
        need = prompt_est + max_tokens
        now = cfg.clock()
        try:
            caller, res = await admissions.admit(auth, request.headers.get("x-aicommons-app"), cfg.budget, need,
                                          price.cost(prompt_est, max_tokens), now)
        except acc.Unauthorized:
            return unauthorized()
        except acc.OverBudget as exc:
            counters.rejected["budget"] += 1
            return error(429, exc.message(), "insufficient_quota", "insufficient_quota")
        except psycopg.Error as exc:  # no accounting, no model call: budgets hold even then
            log.warning("gateway database unavailable: %s", exc)
            return error(503, "Model use cannot be accounted for right now; try again shortly.", "api_error",
                         "accounting_unavailable")
        wants_usage = False
        if stream:
            so: dict = body["stream_options"] if isinstance(body.get("stream_options"), dict) else {}
            wants_usage = bool(so.get("include_usage"))
            body["stream_options"] = {**so, "include_usage": True}
        url, accept = f"{cfg.routes[model]}/{path}", "text/event-stream" if stream else "application/json"
        try:
            if transport is None and url.startswith("http://"):
                r = await plain.post(url, body, accept)
            else:
                r = await httpx_post(clients[next(turn) % len(clients)], url, body, accept)
        except UpstreamError as exc:
            await acc.release(pool, res)
            log.warning("upstream of %s unreachable: %s", model, exc)
            return error(502, f"The model server for {model!r} is not reachable; try again shortly.",
                         "api_error", "upstream_unreachable")

        async def settle(usage: dict | None, fallback_completion: int) -> None:
            if usage:
                p, c, metered = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), True
            else:  # no usage (cut short): charge the estimate and what was seen
                p, c, metered = prompt_est, min(fallback_completion, max_tokens), False
            try:
                await acc.settle(pool, res, model=model, app=caller.app, prompt=p, completion=c,
                                 cost=price.cost(p, c), now=now, metered=metered)
            except psycopg.Error as exc:  # the reservation stays held (never less than the use) until its window ends
                log.error("could not settle %s's %s request (%d + %d tokens): %s", caller.user, model, p, c, exc)

        if r.status >= 400 or not stream:
            try:
                content = await r.read()
            except UpstreamError as exc:
                await acc.release(pool, res)
                log.warning("upstream of %s failed mid-answer: %s", model, exc)
                return error(502, f"The model server for {model!r} broke off its answer; try again.", "api_error",
                             "upstream_failed")
            finally:
                await r.aclose()
            if r.status >= 400:
                await acc.release(pool, res)
                return Response(content, status_code=r.status, media_type=r.content_type)
            try:
                usage = json.loads(content).get("usage")
            except (ValueError, AttributeError):
                usage = None
            await settle(usage if isinstance(usage, dict) else None, 0)
            return Response(content, status_code=r.status, media_type=r.content_type)

        async def relay():
            usage: dict[str, Any] | None = None
            chunks = 0
            buf = bytearray()
            try:
                async for piece in r.chunks():
                    buf += piece
                    out = []
                    for event in _events(buf):
                        # Only an event with a usage object is parsed (every other one says "usage":null).
                        if b'"usage"' in event and b'"usage":null' not in event and b'"usage": null' not in event:
                            data = _data(event)
                            try:
                                obj = json.loads(data) if data and data != b"[DONE]" else {}
                            except ValueError:
                                obj = {}
                            if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                                usage = obj["usage"]
                                if not wants_usage and not obj.get("choices"):
                                    continue  # the usage-only event the client did not ask for
                        chunks += 1
                        out.append(event)
                    if out:  # what arrived together leaves together: no event waits for a later one
                        yield b"".join(out)
                if buf:
                    yield bytes(buf)
            except BaseException:
                with anyio.CancelScope(shield=True):  # a client gone mid-stream is still charged
                    await r.aclose()
                    await settle(usage, max(chunks - 1, 0))
                raise
            await r.aclose()
            # Settled after the last byte is on its way: the client does not wait for the database.
            task = asyncio.create_task(settle(usage, max(chunks - 1, 0)))
            settling.add(task)
            task.add_done_callback(settling.discard)

        return StreamingResponse(relay(), status_code=r.status, media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await proxy(request, "chat/completions", "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await proxy(request, "completions", "text")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        return await proxy(request, "embeddings", "embeddings")

    app.state.pool = pool
    app.state.counters = counters
    return app
