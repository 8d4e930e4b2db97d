"""Shared by the gateway tests and benchmark: a gateway served by uvicorn on loopback, a database
for it on the test PostgreSQL, and people with keys made by the real tenancy back end."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

import uvicorn

from aicommons.plan.model import Tenant
from aicommons.plan.policy import gateway_key
from aicommons.tenancy.gateway import GatewayBackend
from tests.servers import free_port


def tenant(name: str) -> Tenant:
    """A tenant with only what the gateway back end reads (its name)."""
    return Tenant(user=name, email=None, ctid=0, ip="10.0.5.200", postgres_role=f"u_{name}", databases=(),
                  redis_user=name, redis_prefix=f"{name}:", redis_db=None, qdrant_prefix=name, qdrant_collections=(),
                  buckets=(), s3_key_name=name, apps=(), ports={}, hosts={}, gateway=True)


class People:
    """Keys made the way `users add` makes them: a site secret per person, its hash in the database."""

    def __init__(self, backend: GatewayBackend):
        self.backend = backend
        self.tokens: dict[str, str] = {}

    def add(self, name: str) -> str:
        self.tokens[name] = secrets.token_urlsafe(32)
        self.backend.ensure(tenant(name), {"gateway_key": self.tokens[name]})
        return self.key(name)

    def key(self, name: str) -> str:
        return gateway_key(name, self.tokens[name])


def backend_for(pg, dbname: str) -> GatewayBackend:
    return GatewayBackend(pg.host, pg.port, pg.user, pg.password, dbname)


def conninfo(pg, dbname: str) -> str:
    return f"host={pg.host} port={pg.port} user={pg.user} password={pg.password} dbname={dbname}"


class Served:
    """An ASGI app served by a real uvicorn on 127.0.0.1 in a thread of its own (own event loop)."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
