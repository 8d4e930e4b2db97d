"""The rendered PostgreSQL and Redis files, loaded by the real servers (Debian's PostgreSQL 15
and Redis 7 on loopback), and tenants connecting through them.

Real: both servers, their config parsers, pg_hba matching and Redis ACLs. Adapted for the test
host: listen address/port/directories are overridden (the files name 10.0.5.x), and for the
connection checks the tenants' 10.0.5.x/32 pg_hba addresses become 127.0.0.1/32.
"""

from __future__ import annotations

import subprocess

import psycopg
import pytest
import redis
from psycopg import sql

from aicommons.render import render_site
from aicommons.render.write import write_tree
from tests.servers import _wait_port, free_port, start_postgres
from tests.test_traefik_harness import FakeSecrets, make_site


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    # one shared Redis (isolation=acl), whose users.acl holds the tenants; a user's own server is
    # started from its rendered configuration in tests/test_abuse.py and test_redis_service.py
    site = make_site(3, tweak=lambda d: d["redis"].update(isolation="acl"))
    secrets = FakeSecrets()
    out = tmp_path_factory.mktemp("rendered")
    write_tree(render_site(site, secrets), out)
    return site, secrets, out


@pytest.fixture(scope="module")
def own_pg():
    srv = start_postgres()
    yield srv
    srv.cleanup()


def test_postgres_loads_the_rendered_conf_and_hba(own_pg, rendered):
    site, secrets, out = rendered
    data = own_pg.dir / "data"
    frag = data / "aicommons.conf"
    frag.write_text((out / "services/postgres/conf.d/aicommons.conf").read_text())
    with (data / "postgresql.conf").open("a") as f:
        # The fragment as the site uses it, then what this host needs (loopback, a free port).
        f.write(f"include 'aicommons.conf'\nlisten_addresses = '127.0.0.1'\nport = {own_pg.port}\n")
    hba = (out / "services/postgres/pg_hba.conf").read_text()
    (data / "pg_hba.conf").write_text(hba)
    own_pg.stop()
    own_pg.start()
    with psycopg.connect(own_pg.admin_dsn, autocommit=True) as c:
        assert c.execute("SHOW password_encryption").fetchone()[0] == "scram-sha-256"
        steps = max(1, -(-len(site.tenants) // 50))  # in steps of 50 users
        assert int(c.execute("SHOW max_connections").fetchone()[0]) == 100 + 10 * 50 * steps
        assert c.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL").fetchone()[0] == 0
        rules = c.execute("SELECT database, user_name, address, auth_method FROM pg_hba_file_rules "
                          "WHERE type = 'host'").fetchall()
        for t in site.tenants:
            for db in t.databases:
                assert ([db], [t.postgres_role], t.ip, "scram-sha-256") in rules
        for t in site.tenants:
            c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(t.postgres_role), sql.Literal(secrets(t.user, "postgres_password"))))
            for db in t.databases:
                c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db),
                                                                        sql.Identifier(t.postgres_role)))
    # Tenant 1 connects from loopback here instead of its 10.0.5.x container.
    t1, t2 = site.tenants[0], site.tenants[1]
    local = hba.replace(f" {t1.ip}/32 ", " 127.0.0.1/32 ")
    (data / "pg_hba.conf").write_text(local)
    own_pg.reload()

    def dsn(t, db, password=None):
        return (f"host=127.0.0.1 port={own_pg.port} dbname={db} user={t.postgres_role} "
                f"password={password or secrets(t.user, 'postgres_password')}")
    for db in t1.databases:
        with psycopg.connect(dsn(t1, db)) as c:
            assert c.execute("SELECT current_user").fetchone()[0] == t1.postgres_role
    # from a tenant's address nothing but its own databases: not another tenant's, not the shared ones
    for db in (t2.databases[0], "postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects connection"):
            psycopg.connect(dsn(t1, db))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn(t1, t1.databases[0], password="wrong"))


def test_redis_loads_the_rendered_conf_and_acl(rendered, tmp_path):
    site, secrets, out = rendered
    acl = tmp_path / "users.acl"
    acl.write_text((out / "services/redis/users.acl").read_text())
    port = free_port()
    proc = subprocess.Popen(["redis-server", str(out / "services/redis/redis.conf"), "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(tmp_path), "--aclfile", str(acl),
                             "--daemonize", "no", "--logfile", str(tmp_path / "log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        admin = redis.Redis(port=port, username="admin", password=secrets("site", "redis_admin_password"))
        assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert admin.config_get("databases")["databases"] == str(site.site.redis.databases)
        assert admin.config_get("appendonly")["appendonly"] == "yes"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()  # default user is off
        t1, t2 = site.tenants[0], site.tenants[1]
        r1 = redis.Redis(port=port, username=t1.redis_user, password=secrets(t1.user, "redis_password"))
        r2 = redis.Redis(port=port, username=t2.redis_user, password=secrets(t2.user, "redis_password"))
        r1.set(f"{t1.redis_prefix}k", "v1")
        assert r1.get(f"{t1.redis_prefix}k") == b"v1"
        for denied in (lambda: r1.set(f"{t2.redis_prefix}k", "x"), lambda: r2.get(f"{t1.redis_prefix}k"),
                       lambda: r1.keys("*"), lambda: r1.scan(), lambda: r1.flushall(),
                       lambda: r1.execute_command("SELECT", 1), lambda: r1.randomkey()):
            with pytest.raises(redis.exceptions.NoPermissionError):
                denied()
        assert r1.execute_command("SELECT", 0) is True
        lf = redis.Redis(port=port, username="langfuse", password=secrets("site", "langfuse_redis_password"))
        assert lf.ping()
    finally:
        proc.terminate()
        proc.wait(10)
