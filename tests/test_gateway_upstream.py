"""The gateway's small HTTP/1.1 client for plain-HTTP model servers (aicommons.gateway.upstream).

Real: asyncio TCP servers on 127.0.0.1 answering with each HTTP/1.1 body framing (RFC 9112 §6.3:
chunked with a trailer, Content-Length, the connection's end) and closing idle keep-alive
connections as cpp-httplib does after its keep-alive timeout. Simulated: nothing; the servers'
answers are fixed bytes.
"""

from __future__ import annotations

import asyncio

import pytest

from aicommons.gateway.upstream import PlainClient, UpstreamError
from tests.servers import free_port


async def serve(answers: list[bytes], *, close_after_each: bool) -> tuple[asyncio.Server, list[bytes]]:
    """A server giving the next answer to each request; returns it and the request bodies it read."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while answers:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
                seen.append(await reader.readexactly(n))
                writer.write(answers.pop(0))
                await writer.drain()
                if close_after_each:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), seen


def url(server: asyncio.Server) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"


def test_each_body_framing_is_read_whole():
    async def run():
        server, seen = await serve([
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\n\r\nto the end",
        ], close_after_each=False)
        c = PlainClient(read_timeout=10)
        out = []
        for _ in range(3):
            r = await c.post(url(server), {"n": 1}, "text/event-stream")
            out.append((r.status, r.content_type, await r.read()))
            await r.aclose()
        await c.aclose()
        server.close()
        return out, seen

    out, seen = asyncio.run(run())
    assert out == [(200, None, b"hello world"), (404, "application/json", b"{}"), (200, None, b"to the end")]
    assert seen == [b'{"n":1}'] * 3


def test_a_connection_closed_while_idle_is_replaced_once():
    """The server closes after each answer without saying so: the next request, sent on the pooled
    connection, meets its end before any byte and is sent again on a new one."""
    async def run():
        server, seen = await serve([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] * 2, close_after_each=True)
        c = PlainClient(read_timeout=10)
        bodies = []
        for _ in range(2):
            r = await c.post(url(server), {}, "application/json")
            bodies.append(await r.read())
            await r.aclose()
            await asyncio.sleep(0)
        await c.aclose()
        server.close()
        return bodies, seen

    bodies, seen = asyncio.run(run())
    assert bodies == [b"ok", b"ok"] and len(seen) == 2


def test_unreachable_and_broken_off_answers_are_upstream_errors():
    async def run():
        c = PlainClient(read_timeout=10)
        with pytest.raises(UpstreamError, match="cannot connect"):
            await c.post(f"http://127.0.0.1:{free_port()}/v1/x", {}, "application/json")
        server, _ = await serve([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"], close_after_each=True)
        r = await c.post(url(server), {}, "text/event-stream")
        with pytest.raises(UpstreamError, match="broke off"):
            await r.read()
        await r.aclose()
        server.close()

    asyncio.run(run())


def test_chunks_are_decoded_whatever_the_reads_bring():
    """Chunk framing split anywhere across reads, and several chunks in one read, decode alike."""
    from aicommons.gateway.upstream import _dechunk

    wire = b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-T: 1\r\n\r\n"
    for cut in range(1, len(wire)):
        buf, got, end = bytearray(), [], False
        for piece in (wire[:cut], wire[cut:]):
            buf += piece
            out, end = _dechunk(buf)
            got.append(out)
        assert b"".join(got) == b"hello world" and end and not buf, cut
    with pytest.raises(UpstreamError, match="bad chunk size"):
        _dechunk(bytearray(b"zz\r\n"))
