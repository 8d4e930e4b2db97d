"""A tiny HTTP responder on 127.0.0.1, many ports at once, in a background thread.

Stand-in for services that cannot run here (Ollama, Traefik's API, the per-user apps) in
tests and benchmarks/status.py. `delay` makes a slow endpoint; `hang` one that never answers;
`tls` (a server SSLContext) speaks HTTPS, as Traefik's entry point does. Binds loopback only.
"""

from __future__ import annotations

import asyncio
import json
import threading


class LoopbackHttp:
    def __init__(self, routes: dict[str, tuple[int, object]] | None = None, *, ports: int = 1,
                 delay: float = 0.0, hang: bool = False, tls=None):
        self.routes = routes or {}
        self.count = ports
        self.delay = delay
        self.hang = hang
        self.tls = tls
        self.ports: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            if self.hang:
                await asyncio.sleep(3600)
            if self.delay:
                await asyncio.sleep(self.delay)
            status, body = self.routes.get(path, (200, "ok") if not self.routes else (404, "not found"))
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (status, len(data), data))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _start(self) -> None:
        for _ in range(self.count):
            srv = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=512, ssl=self.tls)
            self._servers.append(srv)
            self.ports.append(srv.sockets[0].getsockname()[1])

    def start(self) -> LoopbackHttp:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        async def close() -> None:
            for s in self._servers:
                s.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> LoopbackHttp:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
