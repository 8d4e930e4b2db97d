"""One health check per protocol, all async and each bounded by its own timeout.

A check first opens a TCP connection (refused or unreachable -> `down`), then speaks the
service's protocol with the time left; no answer in time -> `slow`, never a hung sweep.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Literal

import h11

Kind = Literal["http", "tcp", "postgres", "redis", "ollama", "traefik", "route", "signin", "llamacpp", "limits",
               "backend"]
State = Literal["ok", "slow", "down", "skipped"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # `postgres`, `user1/openwebui`
    kind: Kind
    host: str
    port: int
    phase: int
    user: str | None = None
    path: str = "/"
    expect_status: int = 200
    critical: bool = False  # down -> the whole site is critical (phase-1 shared services)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    expect_models: tuple[str, ...] = ()  # ollama: models the site declares; llamacpp: (name, kind)
    skip_reason: str = ""
    deployed: bool = True  # False: the driver or runtime does not run it here (skip_reason says why)
    # route: the host a person opens (TLS name and Host header, through Traefik at host:port);
    # route/signin: the sign-in provider behind the route's forward-auth ("" = none)
    sni: str = ""
    provider: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Result:
    check: Check
    state: State
    latency_ms: float
    reason: str = ""


class Failed(Exception):
    """The service answered, wrongly: the message is the reason shown to the operator."""


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
MAX_BODY = 4 << 20


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


async def http_get(streams: Streams, host: str, path: str, headers: tuple[tuple[str, str], ...] = (),
                   send: bytes | None = None) -> tuple[int, bytes]:
    """One HTTP/1.1 GET (or a JSON POST of `send`) over open streams, parsed by h11 (httpx costs ~5x
    more per request, which matters when one sweep makes hundreds)."""
    reader, writer = streams
    conn = h11.Connection(h11.CLIENT)
    head = [("Host", host), ("User-Agent", "aicommons-status"), ("Connection", "close"), *headers]
    if send is not None:
        head += [("Content-Type", "application/json"), ("Content-Length", str(len(send)))]
    writer.write(conn.send(h11.Request(method="GET" if send is None else "POST", target=path, headers=head)))
    if send:
        writer.write(conn.send(h11.Data(data=send)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
    status, body = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise Failed(f"GET {path}: answer larger than {MAX_BODY >> 20} MB")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, bytes(body)


async def _get(c: Check, path: str, streams: Streams | None = None) -> tuple[int, bytes]:
    own = streams is None
    streams = streams or await asyncio.open_connection(c.host, c.port)
    try:
        return await http_get(streams, c.address, path)
    finally:
        if own:
            await _close(streams[1])


async def check_http(c: Check, streams: Streams) -> str:
    status, _ = await _get(c, c.path, streams)
    if status != c.expect_status:
        raise Failed(f"GET {c.path} answered {status}, expected {c.expect_status}")
    return ""


async def check_ollama(c: Check, streams: Streams) -> str:
    status, _ = await _get(c, "/", streams)
    if status != 200:
        raise Failed(f"GET / answered {status}")
    status, body = await _get(c, "/api/tags")
    if status != 200:
        raise Failed(f"GET /api/tags answered {status}")
    names = [m.get("name", "") for m in json.loads(body).get("models", [])]
    have = set(names) | {n.removesuffix(":latest") for n in names}
    missing = [m for m in c.expect_models if m not in have]
    if missing:
        raise Failed(f"models not pulled: {', '.join(missing)}")
    return f"{len(names)} models"


async def check_llamacpp(c: Check, streams: Streams) -> str:
    """llama-server by its own protocol: /health, then one tiny real request to the model it serves
    (a one-token chat completion, or the embedding of one word)."""
    status, _ = await _get(c, "/health", streams)
    if status != 200:
        raise Failed(f"GET /health answered {status} (503: the model is still loading)")
    name, kind = c.expect_models
    req: dict[str, object]
    if kind == "embedding":
        path, req = "/v1/embeddings", {"model": name, "input": "ok"}
    else:
        path, req = "/v1/chat/completions", {"model": name, "max_tokens": 1,
                                              "messages": [{"role": "user", "content": "Say ok."}]}
    reader_writer = await asyncio.open_connection(c.host, c.port)
    try:
        status, body = await http_get(reader_writer, c.address, path, send=json.dumps(req).encode())
    finally:
        await _close(reader_writer[1])
    if status != 200:
        raise Failed(f"POST {path} answered {status}: {body[:200].decode(errors='replace')}")
    answer = json.loads(body)
    if kind == "embedding":
        dims = len(answer["data"][0]["embedding"])
        return f"{name}: embedding of {dims} dimensions"
    return f"{name}: {answer.get('usage', {}).get('completion_tokens', '?')} token answered"


async def check_traefik(c: Check, streams: Streams) -> str:
    status, body = await _get(c, "/api/http/routers", streams)
    if status != 200:
        raise Failed(f"GET /api/http/routers answered {status}")
    routers = json.loads(body)
    bad = [f"{x.get('name')}: {x.get('error') or x.get('status')}" for x in routers
           if x.get("status") != "enabled"]
    if bad:
        raise Failed(f"{len(bad)} routers not enabled ({'; '.join(bad[:3])})")
    return f"{len(routers)} routers enabled"


async def check_backend(c: Check, streams: Streams) -> str:
    """An app as Traefik sees it, for a checker that may not reach the app itself (the portal: a
    person's apps admit only Traefik): the serverStatus Traefik's own health check keeps for the
    route's service (render/traefik.py gives every person's app one), read from its API."""
    status, body = await _get(c, c.path, streams)
    if status == 404:
        raise Failed(f"Traefik has no service {c.path.rsplit('/', 1)[-1]}")
    if status != 200:
        raise Failed(f"GET {c.path} answered {status}")
    servers = json.loads(body).get("serverStatus") or {}
    if not servers:
        raise Failed("Traefik keeps no health status for it (no health check)")
    down = [url for url, state in servers.items() if state != "UP"]
    if down:
        raise Failed(f"Traefik's health check finds {', '.join(down)} down")
    return "Traefik's health check finds it up"


async def check_postgres(c: Check, timeout: float) -> str:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(
        host=c.host, port=c.port, user=c.username or "postgres", password=c.password or "",
        dbname="postgres", connect_timeout=max(1, int(timeout)))
    try:
        cur = await conn.execute("SELECT 1")
        await cur.fetchone()
    finally:
        await conn.close()
    return ""


async def check_redis(c: Check, timeout: float) -> str:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import AuthenticationError, ResponseError

    r = aioredis.Redis(host=c.host, port=c.port, username=c.username, password=c.password,
                       socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0))  # a refused login must not be retried
    try:
        await r.ping()
    except AuthenticationError as exc:
        if c.password:
            raise Failed(f"login refused: {exc}") from None
        return "answered (no credentials to log in)"
    except ResponseError as exc:  # NOAUTH: the server is alive but wants a login
        if "NOAUTH" in str(exc) and not c.password:
            return "answered (no credentials to log in)"
        raise Failed(str(exc)) from None
    finally:
        await r.aclose()
    return ""


REDIRECTS = (301, 302, 303, 307, 308)


async def check_route(c: Check, streams: Streams) -> str:
    """The person's path: the app's host through Traefik, as an anonymous browser opens it.

    Behind forward-auth the answer must send them to sign in (a redirect, or 401/403 from a
    provider that answers so). An anonymous request never reaches the app there: Traefik answers
    500 itself when the forward-auth endpoint cannot be reached and passes on any other non-2xx
    answer of that endpoint (pkg/middlewares/auth/forward.go), so every 5xx is the provider's (a
    502 from the web server in front of a stopped LemonLDAP::NG FastCGI server, say). Without
    forward-auth, 502-504 is the app behind Traefik not answering; 404 is Traefik without a router."""
    status, _ = await http_get(streams, c.sni, c.path)
    if status == 404:
        raise Failed(f"https://{c.sni}/ answered 404: Traefik has no router for it")
    if status >= 500 and c.provider:
        raise Failed(f"https://{c.sni}/ answered {status}: the sign-in provider ({c.provider}) behind its "
                     "forward-auth did not answer")
    if status >= 500:
        raise Failed(f"https://{c.sni}/ answered {status}: the app behind Traefik did not answer")
    if c.provider and status not in (*REDIRECTS, 401, 403):
        raise Failed(f"https://{c.sni}/ answered {status} to an anonymous request: not behind sign-in")
    return f"sends anonymous visitors to sign in ({status})" if c.provider else f"answers ({status})"


async def check_signin(c: Check, streams: Streams) -> str:
    """The forward-auth endpoint the rendered middleware names, asked as Traefik asks it (the
    X-Forwarded-* of a request for the site's domain): any answer below 500 means it decides."""
    status, _ = await http_get(streams, c.address, c.path, (
        ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", c.sni or c.host), ("X-Forwarded-Uri", "/"),
        ("X-Forwarded-Method", "GET")))
    if status >= 500 or status == 0:
        raise Failed(f"the sign-in provider ({c.provider}) answered {status} at its forward-auth endpoint")
    return f"answers ({status})"


HTTP_KINDS = {"http": check_http, "ollama": check_ollama, "traefik": check_traefik, "route": check_route,
              "backend": check_backend, "signin": check_signin, "llamacpp": check_llamacpp}


def _tls():
    """No certificate check: status asks whether the route answers, not whether Let's Encrypt has
    issued yet (until then Traefik serves its default certificate)."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def run_check(c: Check, timeout: float, slow_ms: float) -> Result:
    if c.skip_reason:
        return Result(c, "skipped", 0.0, c.skip_reason)
    start = time.monotonic()

    def ms() -> float:
        return (time.monotonic() - start) * 1000

    try:
        async with asyncio.timeout(timeout):  # no extra task per check, unlike wait_for
            if c.kind == "route":  # TLS as a browser speaks it: SNI picks the route's certificate
                streams = await asyncio.open_connection(c.host, c.port, ssl=_tls(), server_hostname=c.sni)
            else:
                streams = await asyncio.open_connection(c.host, c.port)
    except (TimeoutError, OSError) as exc:
        if isinstance(exc, asyncio.TimeoutError):
            why = "no answer to connect"
        elif isinstance(exc, ConnectionRefusedError):
            why = "connection refused (nothing listens)"
        else:
            why = exc.strerror or str(exc)
        if c.kind == "signin":
            why = f"the sign-in provider ({c.provider}) does not answer: {why}"
        return Result(c, "down", ms(), f"{c.address}: {why}")
    left = max(0.05, timeout - (time.monotonic() - start))
    try:
        if c.kind in HTTP_KINDS:
            async with asyncio.timeout(left):
                note = await HTTP_KINDS[c.kind](c, streams)
        else:
            await _close(streams[1])  # the port answers; now log in with the real client
            fn = {"tcp": None, "postgres": check_postgres, "redis": check_redis}[c.kind]
            async with asyncio.timeout(left):
                note = await fn(c, left) if fn else ""
    except TimeoutError:
        return Result(c, "slow", ms(), f"no answer within {timeout:g}s")
    except Failed as exc:
        return Result(c, "down", ms(), str(exc))
    except Exception as exc:  # noqa: BLE001 - any protocol error is a failed check, with its reason
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Result(c, "down", ms(), text[:200])
    finally:
        if c.kind in HTTP_KINDS:
            await _close(streams[1])
    elapsed = ms()
    if elapsed > slow_ms:
        return Result(c, "slow", elapsed, f"answered in {elapsed:.0f} ms (over {slow_ms:.0f} ms)")
    return Result(c, "ok", elapsed, note)


async def sweep(checks: list[Check], *, timeout: float = 3.0, slow_ms: float = 1000.0,
                concurrency: int = 256) -> list[Result]:
    """Run every check concurrently (bounded), results in the order of `checks`."""
    sem = asyncio.Semaphore(concurrency)

    async def one(c: Check) -> Result:
        async with sem:
            return await run_check(c, timeout, slow_ms)

    return list(await asyncio.gather(*(one(c) for c in checks)))
