"""Calls to the model servers: a small HTTP/1.1 client for plain-HTTP upstreams, httpx for the rest.

Why not httpx everywhere: relaying a stream through httpx costs the gateway about a third of its
CPU per request (profiled at 50 streams: httpcore's connection pool, h11's event machinery and
anyio's stream wrappers run for every server-sent event). The model servers a site runs are on its
internal network over plain HTTP (llama-server, Ollama), and all this path needs of HTTP/1.1 is a
POST with a Content-Length and a response framed by chunks, a Content-Length or the connection's
end (RFC 9112 §6.3). TLS upstreams, and tests that inject an httpx transport, use httpx.

Keep-alive connections are pooled per server. A pooled connection the server closed while idle
(cpp-httplib closes after its keep-alive timeout) fails before any byte of a response: the request
is then sent once more on a new connection (the server never read the first copy).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx


class UpstreamError(Exception):
    """The model server could not be reached, or broke off (any transport failure, either client)."""


class Response:
    status: int
    content_type: str | None

    def chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def aclose(self) -> None:
        raise NotImplementedError


class _HttpxResponse(Response):
    def __init__(self, r: httpx.Response):
        self.r, self.status, self.content_type = r, r.status_code, r.headers.get("content-type")

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self.r.aiter_raw():
                yield piece
        except httpx.HTTPError as exc:
            raise UpstreamError(str(exc) or type(exc).__name__) from exc

    async def read(self) -> bytes:
        try:
            return await self.r.aread()
        except httpx.HTTPError as exc:
            raise UpstreamError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self.r.aclose()


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class _PlainResponse(Response):
    def __init__(self, client: PlainClient, key: tuple[str, int], conn: _Conn, status: int, headers: dict[str, str]):
        self.client, self.key, self.status = client, key, status
        self.conn: _Conn | None = conn
        self.content_type = headers.get("content-type")
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = "0" if status in (204, 304) else headers.get("content-length")
        self.length = int(length) if length is not None and length.isdigit() and not self.chunked else None
        self.reusable = headers.get("connection", "").lower() != "close" and (self.chunked or self.length is not None)
        self.done = False

    async def _read(self, op):
        try:
            async with asyncio.timeout(self.client.read_timeout):
                return await op
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            raise UpstreamError(f"the model server broke off its answer ({type(exc).__name__})") from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self.conn is not None, "the answer was closed"
        r = self.conn.reader
        if self.chunked:
            # Decoded from what each read brings: every chunk complete in it leaves at once (under load
            # several events arrive together and go on in one write; none waits for a later read).
            buf, end = bytearray(), False
            while not end:
                data = await self._read(r.read(65536))
                if not data:
                    raise UpstreamError("the model server broke off its answer (connection closed mid-body)")
                buf += data
                out, end = _dechunk(buf)
                if out:
                    yield out
            if buf:  # bytes after the last chunk: not an answer to anything, so the connection is not reused
                self.reusable = False
        elif self.length is not None:
            left = self.length
            while left:
                data = await self._read(r.read(min(left, 65536)))
                if not data:
                    raise UpstreamError("the model server broke off its answer (short body)")
                left -= len(data)
                yield data
        else:
            while data := await self._read(r.read(65536)):
                yield data
        self.done = True

    async def aclose(self) -> None:
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        if self.done and self.reusable:
            self.client.put(self.key, conn)
        else:  # unread rest, or framed by the connection's end: the connection cannot carry another request
            conn.close()


def _dechunk(buf: bytearray) -> tuple[bytes, bool]:
    """The data of the complete chunks at the front of `buf` (removed from it), and whether the last
    chunk and its trailer section were among them (RFC 9112 §7.1)."""
    out: list[bytes] = []
    while (i := buf.find(b"\r\n")) >= 0:
        try:
            size = int(bytes(buf[:i]).split(b";", 1)[0], 16)
        except ValueError:
            raise UpstreamError(f"the model server sent a bad chunk size {bytes(buf[:40])!r}") from None
        if size == 0:
            j = buf.find(b"\r\n\r\n", i)  # the end of the trailer section (empty when "0\r\n\r\n")
            if j < 0:
                break
            del buf[:j + 4]
            return b"".join(out), True
        if len(buf) < i + size + 4:
            break
        out.append(bytes(buf[i + 2:i + 2 + size]))
        del buf[:i + size + 4]
    if buf.find(b"\r\n") < 0 and len(buf) > 4096:  # a chunk-size line is a few bytes
        raise UpstreamError(f"the model server sent a bad chunk size {bytes(buf[:40])!r}")
    return b"".join(out), False


class PlainClient:
    """HTTP/1.1 without TLS, keep-alive pooled per (host, port)."""

    def __init__(self, read_timeout: float, connect_timeout: float = 10.0, keep: int = 64):
        self.read_timeout, self.connect_timeout, self.keep = read_timeout, connect_timeout, keep
        self.idle: dict[tuple[str, int], list[_Conn]] = {}

    def put(self, key: tuple[str, int], conn: _Conn) -> None:
        idle = self.idle.setdefault(key, [])
        if len(idle) < self.keep:
            idle.append(conn)
        else:
            conn.close()

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(*key, limit=1 << 20)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]} ({exc or type(exc).__name__})") from exc
        return _Conn(reader, writer)

    async def post(self, url: str, body: dict, accept: str) -> Response:
        u = urlsplit(url)
        key = (u.hostname or "", u.port or 80)
        data = json.dumps(body, separators=(",", ":")).encode()
        head = (f"POST {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
                f"Accept: {accept}\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        idle = self.idle.get(key)
        while True:
            pooled = bool(idle)
            conn = idle.pop() if idle else await self._connect(key)
            try:
                conn.writer.write(head + data)
                async with asyncio.timeout(self.read_timeout):
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
                break
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                conn.close()
                stale = pooled and isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)) and \
                    not getattr(exc, "partial", b"")
                if not stale:
                    raise UpstreamError(f"no answer from {key[0]}:{key[1]} ({type(exc).__name__})") from exc
        lines = raw.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            conn.close()
            raise UpstreamError(f"not an HTTP answer from {key[0]}:{key[1]}: {lines[0][:80]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return _PlainResponse(self, key, conn, status, headers)

    async def aclose(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.close()
        self.idle.clear()


async def post(client: httpx.AsyncClient, url: str, body: dict, accept: str) -> Response:
    """The same call through httpx (TLS upstreams, injected transports)."""
    try:
        r = await client.send(client.build_request("POST", url, json=body, headers={"accept": accept}), stream=True)
    except httpx.HTTPError as exc:
        raise UpstreamError(str(exc) or type(exc).__name__) from exc
    return _HttpxResponse(r)
