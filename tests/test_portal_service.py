"""The portal never blocks on a back end, limits sign-in attempts, and marks its cookie Secure
behind HTTPS (issue 23, attack 6).

Real: the portal app (FastAPI, its routes, identity and site view, the state store) driven
in-process through httpx's ASGI transport. Simulated: the compute driver is a stand-in whose
reads hang until the test releases them (the Proxmox API unreachable), and the status sweep
answers at once with nothing (so what is shown to hang is the driver alone).
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from aicommons.portal.config import PortalConfig, parse_proxies
from aicommons.spec.default import render_site_yaml

SSO = {"x-authentik-username": "user1"}


class HangingDriver:
    kind = "lxc"
    configures_services = False

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def list_containers(self):
        self.entered.set()
        self.release.wait(20)  # at most: a portal that waits for it answers only after this
        self.returned.set()
        return []


def _config(tmp_path, monkeypatch, status_timeout: float) -> PortalConfig:
    """A two-user LXC site whose status sweep answers at once with nothing."""
    from aicommons.ops import status as ops_status

    async def no_checks(*args, **kw):
        return 0, []

    monkeypatch.setattr(ops_status, "status_async", no_checks)
    site = tmp_path / "site.yaml"
    site.write_text(render_site_yaml(users=2, driver="lxc", domain="example.org"))
    return PortalConfig(site_file=site, trusted_proxies=parse_proxies(["127.0.0.1"]), status_timeout=status_timeout,
                        refresh_seconds=60)


@pytest.fixture
def portal(tmp_path, monkeypatch):
    from aicommons.portal.app import create_app

    drv = HangingDriver()
    app = create_app(_config(tmp_path, monkeypatch, 0.5), driver=drv)
    yield app, drv
    drv.release.set()


def client(app, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(peer, 40000)), base_url="http://portal")


def test_healthz_answers_while_the_driver_hangs(portal):
    app, drv = portal

    async def go():
        async with client(app) as c:
            me = asyncio.create_task(c.get("/api/me", headers=SSO))
            while not drv.entered.is_set():  # the driver read has started and is stuck
                await asyncio.sleep(0.01)
            health = await c.get("/healthz")
            assert health.status_code == 200 and not drv.returned.is_set()  # answered while the read hangs
            answer = await me  # the page answers too, from what is known
            assert answer.status_code == 200, answer.text
            assert not drv.returned.is_set()  # ... while the driver is still blocked
            drv.release.set()

    asyncio.run(go())


def test_signin_is_rate_limited_per_client(portal):
    app, _drv = portal

    async def go():
        async with client(app) as c:
            codes = [(await c.post("/signin", data={"token": "wrong"})).status_code for _ in range(6)]
            assert codes == [401] * 5 + [429]
            again = await c.post("/signin", data={"token": app.state.admin_token()})
            assert again.status_code == 429 and int(again.headers["retry-after"]) > 0  # even the right token waits
            # another client behind the same trusted proxy is not locked out by the first
            other = await c.post("/signin", data={"token": "wrong"}, headers={"x-forwarded-for": "192.0.2.7"})
            assert other.status_code == 401

    asyncio.run(go())


def test_the_session_cookie_is_secure_behind_https(portal):
    app, _drv = portal

    async def go():
        token = app.state.admin_token()
        async with client(app) as c:  # Traefik (trusted) terminated TLS
            r = await c.post("/signin", data={"token": token}, headers={"x-forwarded-proto": "https"})
            assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()
            r = await c.post("/signin", data={"token": token})  # plain HTTP on loopback
            assert r.status_code == 303 and "secure" not in r.headers["set-cookie"].lower()
        async with client(app, peer="127.0.0.2") as c:  # anyone else cannot claim HTTPS
            r = await c.post("/signin", data={"token": token}, headers={"x-forwarded-proto": "https"})
            assert r.status_code == 303 and "secure" not in r.headers["set-cookie"].lower()

    asyncio.run(go())


class ChangingDriver:
    """Its first read begins before a user is added and returns the old list late; every later
    read returns the list with the new container."""
    kind = "lxc"
    configures_services = False

    def __init__(self):
        from aicommons.drivers.base import ContainerState

        self.release = threading.Event()
        self.reads = 0
        self.after = [ContainerState(ctid=202, hostname="user3", status="running")]

    def list_containers(self):
        self.reads += 1
        if self.reads == 1:
            self.release.wait(20)
            return []
        return self.after


def test_a_change_is_not_hidden_by_a_driver_read_begun_before_it(tmp_path, monkeypatch):
    """The CI's console showed a just-added user with 3 / 3 apps ok and container "missing": the
    sweep after the change reused the driver read in flight, begun before the container existed."""
    from aicommons.portal.site import SiteView

    drv = ChangingDriver()
    view = SiteView(_config(tmp_path, monkeypatch, 0.3), driver=drv)

    async def go():
        await view.status(fresh=True)  # the first read hangs past the timeout: pages show nothing yet
        assert view.containers() == {} and drv.reads == 1
        view.invalidate_status()  # the add has finished: container 202 exists now
        threading.Timer(0.1, drv.release.set).start()  # the old read returns its old list, late
        await view.status()
        assert 202 in view.containers(), "the sweep after the change used a read begun before it"
        assert drv.reads == 2

    try:
        asyncio.run(go())
    finally:
        drv.release.set()
        view.close()
