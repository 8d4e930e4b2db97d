"""PostgreSQL and Redis tenancy against the REAL Debian PostgreSQL 15 and Redis 7 (fixtures `pg`,
`redis_server`, on loopback). Nothing is simulated: grants, ACLs and logins are the servers' own.
"""

from __future__ import annotations

import psycopg
import pytest
import redis as redislib

from aicommons.errors import TemporaryError
from aicommons.tenancy.postgres import PostgresBackend, scram_verifier, verifier_matches
from aicommons.tenancy.redis import RedisBackend
from tests.standins.helpers import DictSecrets, resolved_site


@pytest.fixture
def world(pg, redis_server, tmp_path):
    site = resolved_site(3)
    tenants = site.tenants
    secrets = DictSecrets()
    pgb = PostgresBackend(pg.host, pg.port, pg.user, pg.password, tmp_path / "archive")
    rb = RedisBackend(redis_server.host, redis_server.port, redis_server.admin_user,
                      redis_server.admin_password, tmp_path / "archive")
    for t in tenants:
        pgb.ensure(t, secrets.for_tenant(t))
        rb.ensure(t, secrets.for_tenant(t))
    yield tenants, secrets, pgb, rb
    for t in tenants:
        pgb.remove(t, purge=True)
        rb.remove(t, purge=True)


def leaks(checks):
    return [c for c in checks if not c.ok]


def test_scram_verifier_roundtrip():
    v = scram_verifier("s3cret")
    assert verifier_matches(v, "s3cret")
    assert not verifier_matches(v, "other")
    assert not verifier_matches("md5abc", "s3cret")


def test_three_users_audit_passes_and_verify_is_clean(world):
    tenants, secrets, pgb, rb = world
    for t in tenants:
        assert pgb.verify(t, secrets.for_tenant(t)) == []
        assert rb.verify(t, secrets.for_tenant(t)) == []
    checks = pgb.audit(tenants, secrets.by_user(tenants)) + rb.audit(tenants, secrets.by_user(tenants))
    assert leaks(checks) == []
    # the audit really tried both directions
    assert any(c.expected == "allow" and c.observed == "allow" for c in checks)
    assert sum(c.expected == "deny" and c.backend == "postgres" for c in checks) >= 2 * 3 * 3
    seen = pgb.observe()
    assert {"postgres.role.u_user1", "postgres.database.openwebui_user1"} <= seen["user1"]
    assert set(rb.observe()) >= {"user1", "user2", "user3"}


def test_ensure_is_idempotent_and_repairs_drift(world, pg):
    tenants, secrets, pgb, _ = world
    t = tenants[0]
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute("GRANT CONNECT ON DATABASE openwebui_user1 TO PUBLIC")
        c.execute("ALTER ROLE u_user1 CONNECTION LIMIT 2")
    assert pgb.verify(t, secrets.for_tenant(t))
    pgb.ensure(t, secrets.for_tenant(t))
    pgb.ensure(t, secrets.for_tenant(t))
    assert pgb.verify(t, secrets.for_tenant(t)) == []


def test_weakened_grant_fails_the_audit(world, pg):
    tenants, secrets, pgb, _ = world
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute("GRANT CONNECT ON DATABASE n8n_user2 TO u_user3")
    bad = leaks(pgb.audit(tenants, secrets.by_user(tenants)))
    assert sorted((c.actor, c.target, c.resource) for c in bad) == [
        ("user3", "user2", "CONNECT on database n8n_user2 (granted)"), ("user3", "user2", "database n8n_user2")]
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute("GRANT CONNECT ON DATABASE flowise_user1 TO PUBLIC")
        c.execute("GRANT u_user1 TO u_user2")
    bad = leaks(pgb.audit(tenants, secrets.by_user(tenants)))
    assert ("user2", "user1", "role u_user1") in {(c.actor, c.target, c.resource) for c in bad}
    assert {(c.actor, c.resource) for c in bad} >= {("user2", "database flowise_user1"),
                                                      ("user3", "database flowise_user1")}
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute("REVOKE u_user1 FROM u_user2")


def test_weakened_acl_fails_the_audit(world, redis_server):
    tenants, secrets, _, rb = world
    admin = redislib.Redis(port=redis_server.port, username=redis_server.admin_user,
                           password=redis_server.admin_password)
    admin.execute_command("ACL", "SETUSER", "u_user2", "~*")
    bad = leaks(rb.audit(tenants, secrets.by_user(tenants)))
    assert bad and {c.actor for c in bad} == {"user2"}
    assert {c.resource for c in bad} >= {"key t:user1:aic-audit", "key t:user3:aic-audit"}
    admin.execute_command("ACL", "SETUSER", "u_user1", "+keys")
    bad = leaks(rb.audit(tenants, secrets.by_user(tenants)))
    assert ("user1", "keyless KEYS") in {(c.actor, c.resource) for c in bad}
    admin.execute_command("ACL", "SETUSER", "u_user3", "allchannels")
    bad = leaks(rb.audit(tenants, secrets.by_user(tenants)))
    assert ("user3", "user1", "channel t:user1:aic-audit") in {(c.actor, c.target, c.resource) for c in bad}
    rb.ensure(tenants[2], secrets.for_tenant(tenants[2]))  # ensure takes the widening back
    assert not [c for c in leaks(rb.audit(tenants, secrets.by_user(tenants))) if c.actor == "user3"]


def test_remove_one_user_keeps_others_and_archives(world, pg, redis_server, tmp_path):
    tenants, secrets, pgb, rb = world
    t1, t2 = tenants[0], tenants[1]
    s1, s2 = secrets.for_tenant(t1), secrets.for_tenant(t2)
    with psycopg.connect(host=pg.host, port=pg.port, user=t1.postgres_role, password=s1["postgres_password"],
                         dbname="openwebui_user1", autocommit=True) as c:
        c.execute("CREATE TABLE chats (id int)")
        c.execute("INSERT INTO chats VALUES (42)")
    r1 = redislib.Redis(port=redis_server.port, username=t1.redis_user, password=s1["redis_password"])
    r1.set("t:user1:session", "x")
    r2 = redislib.Redis(port=redis_server.port, username=t2.redis_user, password=s2["redis_password"])
    r2.set("t:user2:session", "y")
    pgb.remove(t1)
    rb.remove(t1)
    dumps = sorted((tmp_path / "archive" / "user1").glob("*.dump"))
    assert [p.name.split("-")[0] for p in dumps] == sorted(t1.databases)
    assert (tmp_path / "archive" / "user1").glob("redis-*.json")
    assert "user1" not in pgb.observe() and "user1" not in rb.observe()
    assert pgb.verify(t2, s2) == [] and rb.verify(t2, s2) == []
    assert r2.get("t:user2:session") == b"y"
    rest = [t for t in tenants if t.user != "user1"]
    assert leaks(pgb.audit(rest, secrets.by_user(rest)) + rb.audit(rest, secrets.by_user(rest))) == []


def test_suspend_revokes_logins_and_ensure_keeps_it_suspended(world):
    tenants, secrets, pgb, rb = world
    t = tenants[0]
    pgb.suspend(t)
    rb.suspend(t)
    pgb.ensure(t, secrets.for_tenant(t))  # an apply must not undo a suspension
    rb.ensure(t, secrets.for_tenant(t))
    checks = [c for c in pgb.audit(tenants, secrets.by_user(tenants)) + rb.audit(tenants, secrets.by_user(tenants))
              if c.actor == "user1" and c.target == "user1"]
    assert checks and all(c.observed != "allow" for c in checks)
    pgb.resume(t, secrets.for_tenant(t))
    rb.resume(t, secrets.for_tenant(t))
    assert leaks(pgb.audit(tenants, secrets.by_user(tenants)) + rb.audit(tenants, secrets.by_user(tenants))) == []


def test_redis_down_is_temporary_and_next_ensure_completes(world, redis_server):
    tenants, secrets, pgb, rb = world
    site = resolved_site(4)
    t4 = site.tenants[3]
    redis_server.stop()
    try:
        pgb.ensure(t4, secrets.for_tenant(t4))
        with pytest.raises(TemporaryError, match="not reachable"):
            rb.ensure(t4, secrets.for_tenant(t4))
    finally:
        redis_server.start()
    # ACL SAVE persisted the first three across the restart
    assert set(rb.observe()) == {"user1", "user2", "user3"}
    pgb.ensure(t4, secrets.for_tenant(t4))
    rb.ensure(t4, secrets.for_tenant(t4))
    everyone = site.tenants
    assert leaks(pgb.audit(everyone, secrets.by_user(everyone)) + rb.audit(everyone, secrets.by_user(everyone))) == []
    pgb.remove(t4, purge=True)
    rb.remove(t4, purge=True)
