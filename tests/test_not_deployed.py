"""`status` and `backup` tell the truth both ways on a site whose driver does not deploy some
services (the default LXC site: Qdrant, Garage, Ollama ... are created, not run).

Real: site.yaml through the real loader/resolver, the real status sweep (asyncio sockets) and
the real backup code; a real PostgreSQL 15 and Redis 7 (tests/servers.py) stand where the site's
PostgreSQL and Redis are, reached through status/backup's own address mapping (`targets`).
Simulated: nothing listens at the undeployed services' addresses (that is the point).
"""

from __future__ import annotations

import dataclasses

import pytest

from aicommons.ops.backup.repo import BackupError, Repo
from aicommons.ops.backup.run import run_backup
from aicommons.ops.backup.site import sources_for
from aicommons.ops.status import HEALTHY, plan_checks, run_status, to_json
from aicommons.plan import resolve
from aicommons.spec.default import render_site_yaml
from aicommons.spec.load import load_text
from aicommons.tenancy.postgres import PostgresBackend
from aicommons.tenancy.redis import RedisBackend
from tests.servers import free_port, start_postgres, start_redis
from tests.standins.helpers import DictSecrets


@pytest.fixture(scope="module")
def lxc_site():
    site, _ = load_text(render_site_yaml(users=2, driver="lxc", redis_isolation="acl"))
    return resolve(site)


def test_status_marks_what_is_not_deployed_and_does_not_count_it(lxc_site):
    checks = {c.name: c for c in plan_checks(lxc_site)}
    assert checks["qdrant"].deployed is False and checks["qdrant"].skip_reason.startswith("not deployed here (")
    assert checks["postgres"].deployed is True and not checks["postgres"].skip_reason
    assert checks["user1/big-agi"].deployed is False and "not available in the native runtime" in \
        checks["user1/big-agi"].skip_reason
    assert checks["user1/openwebui"].deployed is True
    # Only undeployed checks: nothing is down, the site is healthy, JSON says deployed: false.
    only = [c for c in checks.values() if not c.deployed]
    import asyncio

    from aicommons.ops.checks import sweep
    from aicommons.ops.status import verdict

    results = asyncio.run(sweep(only, timeout=0.5))
    assert {r.state for r in results} == {"skipped"} and verdict(results) == HEALTHY
    js = to_json(HEALTHY, results)
    assert all(c["deployed"] is False for c in js["checks"])


def test_status_still_fails_what_is_deployed_and_down(lxc_site):
    # Every deployed check pointed at a closed loopback port: those are down (critical for phase 1).
    port = free_port()
    targets = {f"{c.host}:{c.port}": f"127.0.0.1:{port}" for c in plan_checks(lxc_site) if c.deployed}
    code, results = run_status(lxc_site, targets=targets, timeout=0.5)
    down = {r.check.name for r in results if r.state == "down"}
    assert "postgres" in down and "user1/openwebui" in down and "qdrant" not in down
    assert code != HEALTHY


@pytest.fixture(scope="module")
def servers(lxc_site, tmp_path_factory):
    pg, rd = start_postgres(), start_redis()
    secrets = DictSecrets()
    arch = tmp_path_factory.mktemp("arch")
    pb = PostgresBackend(pg.host, pg.port, pg.user, pg.password, arch)
    rb = RedisBackend(rd.host, rd.port, rd.admin_user, rd.admin_password, arch)
    t = lxc_site.tenant("user1")
    pb.ensure(t, secrets.for_tenant(t))
    rb.ensure(t, secrets.for_tenant(t))
    yield pg, rd, secrets
    pg.cleanup()
    rd.cleanup()


def _sources(lxc_site, pg, rd, secrets, tmp_path):
    def lookup(scope, key):
        return {"postgres_admin_password": pg.password, "redis_admin_password": rd.admin_password}.get(
            key) or secrets(scope, key)

    pgep, rdep = lxc_site.endpoints["postgres"], lxc_site.endpoints["redis"]
    targets = {f"{pgep.host}:{pgep.ports['postgres']}": f"{pg.host}:{pg.port}",
               f"{rdep.host}:{next(iter(rdep.ports.values()))}": f"{rd.host}:{rd.port}"}
    return sources_for(lxc_site, lookup, tmp_path, targets)


def test_user_backup_skips_what_is_not_deployed_and_covers_the_rest(lxc_site, servers, tmp_path):
    pg, rd, secrets = servers
    src = _sources(lxc_site, pg, rd, secrets, tmp_path)
    assert src.qdrant is None and src.s3 is None and src.postgres is not None
    said: list[str] = []
    m = run_backup(lxc_site, src, Repo(tmp_path / "b"), user="user1", step=said.append)
    kinds = {(i.kind, i.name) for i in m.items}
    assert ("skipped", "qdrant") in kinds and ("skipped", "garage") in kinds
    assert ("postgres_db", "openwebui_user1") in kinds and any(k == "redis_keys" for k, _ in kinds)
    assert any(s.startswith("qdrant: not deployed here (") and s.endswith("; skipped") for s in said)


def test_an_unreachable_backend_is_named(lxc_site, servers, tmp_path):
    pg, rd, secrets = servers
    src = _sources(lxc_site, pg, rd, secrets, tmp_path)
    src.redis = dataclasses.replace(src.redis, port=free_port())  # nothing listens there
    with pytest.raises(BackupError) as exc:
        run_backup(lxc_site, src, Repo(tmp_path / "b"), user="user1")
    assert "Redis at 127.0.0.1:" in str(exc.value) and "cannot be reached" in str(exc.value)
    assert not list((tmp_path / "b").glob("*/manifest.json"))  # nothing half-written kept


def _dynamic(resolved):
    import yaml

    from aicommons.render import render_site

    files = render_site(resolved, DictSecrets())
    dynamic = [yaml.safe_load(f.content) or {} for p, f in files.items() if p.startswith("traefik/dynamic/")]
    routers = {n: r for d in dynamic for n, r in d.get("http", {}).get("routers", {}).items()}
    middlewares = {n: m for d in dynamic for n, m in d.get("http", {}).get("middlewares", {}).items()}
    services = {u["url"] for d in dynamic for s in d.get("http", {}).get("services", {}).values()
                for u in s.get("loadBalancer", {}).get("servers", [])}
    return files, routers, middlewares, services


def test_no_route_middleware_or_certificate_for_what_does_not_run(lxc_site):
    """Issue #21: on a fresh default site grafana and auth answered 502 (routes for services not
    deployed) and every app 500 (forward-auth to Authentik, which does not run here). Now the
    default LXC site signs in with LemonLDAP::NG, which does run: forward-auth goes there only."""
    from aicommons.plan.identity import EMAIL_HEADER, LEMONLDAP_AUTH_PATH

    files, routers, middlewares, services = _dynamic(lxc_site)
    gone = set(lxc_site.undeployed)
    assert {"grafana", "qdrant"} <= gone and "lemonldap" not in gone and "authentik" not in lxc_site.endpoints
    gone_ips = {c.ip for c in lxc_site.containers if c.role == "shared" and c.name in gone}
    assert not any(url.split("//")[1].split(":")[0] in gone_ips for url in services)
    assert lxc_site.sign_in == "lemonldap"
    ll = lxc_site.endpoints["lemonldap"].host
    addresses = {m["forwardAuth"]["address"] for m in middlewares.values() if "forwardAuth" in m}
    assert addresses == {f"http://{ll}:80{LEMONLDAP_AUTH_PATH}"}
    hosts = {h for c in lxc_site.certificates for h in c.hosts}
    assert not any(h.startswith(("grafana.", "bigagi-")) for h in hosts)
    assert {f"auth.{lxc_site.site.domain}", f"code-user1.{lxc_site.site.domain}"} <= hosts
    # behind LL::NG: the apps without a login of their own, and its portal
    assert {"ai-user1", "code-user1", "jupyter-user1", "auth"} <= set(routers) and "grafana" not in routers
    assert f"WEBUI_AUTH_TRUSTED_EMAIL_HEADER={EMAIL_HEADER}" in files["users/user1/units/aic-openwebui.service"].content
    # plan says what a person will not have, and why
    assert lxc_site.withheld["grafana"].startswith("not deployed here")
    assert "code-server" not in lxc_site.withheld and "jupyter" not in lxc_site.withheld
    assert any(n.startswith("no route (nothing would answer it): ") and "grafana" in n for n in lxc_site.notes)


def test_without_its_sign_in_provider_an_lxc_site_routes_only_what_has_a_login():
    """LL::NG disabled on an LXC site: no provider runs (Authentik is refused there), so no
    forward-auth, no identity header believed, and the login-less apps are withheld, said so."""
    site, _ = load_text(render_site_yaml(users=2, driver="lxc", redis_isolation="acl"))
    site.services["lemonldap"].enabled = False
    resolved = resolve(site)
    files, routers, middlewares, _ = _dynamic(resolved)
    assert resolved.sign_in is None and not any("forwardAuth" in m for m in middlewares.values())
    hosts = {h for c in resolved.certificates for h in c.hosts}
    assert not any(h.startswith(("auth.", "code-", "jupyter-")) for h in hosts)
    assert "ai-user1" in routers and "auth" not in routers
    assert "WEBUI_AUTH_TRUSTED_EMAIL_HEADER" not in files["users/user1/units/aic-openwebui.service"].content
    assert resolved.withheld["code-server"] == resolved.withheld["jupyter"]
    (note,) = [n for n in resolved.notes if n.startswith("the sign-in provider lemonldap is not enabled")]
    assert "code-server" in note and "enable lemonldap" in note
