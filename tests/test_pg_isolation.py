"""PostgreSQL tenant isolation and removal against the REAL Debian PostgreSQL 15 (fixture `pg`,
loopback). Nothing is simulated: grants, pg_shdepend, large objects, LISTEN/NOTIFY and DROP ROLE
are the server's own. The test cluster's pg_hba admits every role from loopback (initdb -A
scram-sha-256), so what refuses a tenant here is the database privileges alone; the rendered
pg_hba.conf is checked separately (test_render_servers.py, and its order below).

Each attack is first reproduced with the privileges of before issue 14 (PUBLIC keeps CONNECT and
TEMP on `postgres`/`template1`: PostgreSQL's default), then shown refused.
"""

from __future__ import annotations

import ipaddress

import psycopg
import pytest

from aicommons.errors import PermanentError
from aicommons.render.services import pg_hba
from aicommons.tenancy.postgres import PostgresBackend
from tests.standins.helpers import DictSecrets, resolved_site


@pytest.fixture
def world(pg, tmp_path):
    site = resolved_site(3)
    secrets = DictSecrets()
    pgb = PostgresBackend(pg.host, pg.port, pg.user, pg.password, tmp_path / "archive")
    for t in site.tenants:
        pgb.ensure(t, secrets.for_tenant(t))
    yield site.tenants, secrets, pgb
    with admin(pg) as c:  # leave the shared cluster as PostgreSQL makes it for the next module
        c.execute("DROP DATABASE IF EXISTS closed_db")
    for t in site.tenants:
        pgb.remove(t, purge=True)


def admin(pg, db="postgres"):
    return psycopg.connect(pg.admin_dsn.replace("dbname=postgres", f"dbname={db}"), autocommit=True)


def login(pg, t, secrets, db):
    return psycopg.connect(host=pg.host, port=pg.port, user=t.postgres_role,
                           password=secrets.for_tenant(t)["postgres_password"], dbname=db, autocommit=True)


def reopen_public(pg):
    with admin(pg) as c:
        for db in ("postgres", "template1"):
            c.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO PUBLIC")


def leaks(checks):
    return [c for c in checks if not c.ok]


def test_shared_databases_were_a_meeting_place_and_are_now_closed(world, pg):
    tenants, secrets, pgb = world
    t1, t2 = tenants[0], tenants[1]
    reopen_public(pg)  # PostgreSQL's default, and the state of every site before this fix
    with login(pg, t2, secrets, "postgres") as listener, login(pg, t1, secrets, "postgres") as talker:
        listener.execute("LISTEN shared")
        talker.execute("CREATE TEMP TABLE t (x int)")
        oid = talker.execute("SELECT lo_from_bytea(0, 'planted')").fetchone()[0]
        talker.execute("NOTIFY shared, 'from user1'")
        got = next(listener.notifies(timeout=5, stop_after=1))
        assert got.payload == "from user1"  # one tenant talks to another through `postgres`
    with login(pg, t1, secrets, "template1") as c:
        c.execute("CREATE TEMP TABLE t (x int)")
    with admin(pg) as c:
        c.execute("SELECT lo_unlink(%s)", (oid,))
    assert pgb.verify(t1, secrets.for_tenant(t1))  # the weakened cluster is reported
    bad = {(c.actor, c.resource) for c in leaks(pgb.audit(tenants, secrets.by_user(tenants)))}
    assert {("user1", "database postgres"), ("user1", "large object in postgres"),
            ("user1", "LISTEN/NOTIFY in postgres"), ("user1", "temporary table in template1"),
            ("user2", "CONNECT on database postgres (granted)")} <= bad
    pgb.ensure(t1, secrets.for_tenant(t1))  # any apply closes them
    for db in ("postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            login(pg, t1, secrets, db)
    assert pgb.verify(t1, secrets.for_tenant(t1)) == []
    assert leaks(pgb.audit(tenants, secrets.by_user(tenants))) == []


HOLES = [
    ("GRANT CONNECT ON DATABASE postgres TO PUBLIC", ("user1", "database postgres")),
    ("GRANT TEMPORARY ON DATABASE template1 TO PUBLIC", ("user1", "TEMPORARY on database template1 (granted)")),
    ("GRANT CONNECT ON DATABASE n8n_user2 TO u_user1", ("user1", "database n8n_user2")),
    ("GRANT CREATE ON DATABASE n8n_user2 TO u_user1", ("user1", "CREATE on database n8n_user2 (granted)")),
    ("GRANT TEMPORARY ON DATABASE openwebui_user3 TO PUBLIC", ("user1", "TEMPORARY on database openwebui_user3 (granted)")),
    ("GRANT u_user2 TO u_user1", ("user1", "role u_user2")),
]


@pytest.mark.parametrize("grant,expected", HOLES, ids=[h[0] for h in HOLES])
def test_each_hole_reopened_by_hand_fails_the_audit(world, pg, grant, expected):
    tenants, secrets, pgb = world
    assert leaks(pgb.audit(tenants, secrets.by_user(tenants))) == []
    with admin(pg) as c:
        c.execute(grant)
    try:
        assert expected in {(c.actor, c.resource) for c in leaks(pgb.audit(tenants, secrets.by_user(tenants)))}
    finally:
        with admin(pg) as c:
            c.execute(grant.replace("GRANT", "REVOKE", 1).replace(" TO ", " FROM "))
        pgb.ensure(tenants[0], secrets.for_tenant(tenants[0]))


def test_removal_completes_despite_planted_objects_and_grants(world, pg):
    """A large object in `postgres` and a grant on another tenant's database used to make DROP ROLE
    fail forever, for the tenant's own removal and for another user's."""
    tenants, secrets, pgb = world
    t1, t2, t3 = tenants
    reopen_public(pg)  # the window before this fix, when the object was planted
    with login(pg, t1, secrets, "postgres") as c:
        planted = c.execute("SELECT lo_from_bytea(0, 'x')").fetchone()[0]
    pgb.ensure(t1, secrets.for_tenant(t1))
    with login(pg, t2, secrets, t2.databases[0]) as c:  # user2 grants on its own database to user1 ...
        c.execute(f'GRANT CONNECT ON DATABASE "{t2.databases[0]}" TO u_user1')
        c.execute("CREATE TABLE kept (x int)")
        c.execute("INSERT INTO kept VALUES (7)")
    with login(pg, t1, secrets, t1.databases[0]) as c:  # ... and user1 on its own to user3
        c.execute(f'GRANT CONNECT ON DATABASE "{t1.databases[0]}" TO u_user3')
    # the attack, as the old removal met it
    with admin(pg) as c:
        with pytest.raises(psycopg.errors.DependentObjectsStillExist):
            c.execute("DROP ROLE u_user1")
    assert pgb.removal_blockers(t1) == []
    pgb.remove(t1, purge=True)
    with admin(pg) as c:
        assert c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'u_user1'").fetchone() is None
        owner = c.execute("SELECT pg_get_userbyid(lomowner) FROM pg_largeobject_metadata WHERE oid = %s",
                          (planted,)).fetchone()
        assert owner == ("postgres",)  # kept, handed to the database's owner
        c.execute("SELECT lo_unlink(%s)", (planted,))
    # the others are untouched: their data, their logins, a clean audit
    with login(pg, t2, secrets, t2.databases[0]) as c:
        assert c.execute("SELECT x FROM kept").fetchone() == (7,)
    rest = [t2, t3]
    for t in rest:
        assert pgb.verify(t, secrets.for_tenant(t)) == []
    assert leaks(pgb.audit(rest, secrets.by_user(rest))) == []
    pgb.remove(t1, purge=True)  # a re-run is a no-op


def test_a_blocker_refuses_removal_before_anything_changes_and_a_rerun_completes(world, pg):
    tenants, secrets, pgb = world
    t1 = tenants[0]
    with admin(pg) as c:
        c.execute("CREATE DATABASE closed_db")
    with admin(pg, "closed_db") as c:
        oid = c.execute("SELECT lo_from_bytea(0, 'x')").fetchone()[0]
        c.execute(f"ALTER LARGE OBJECT {oid} OWNER TO u_user1")
    with admin(pg) as c:
        c.execute("ALTER DATABASE closed_db ALLOW_CONNECTIONS false")
    with login(pg, t1, secrets, t1.databases[0]) as c:
        c.execute("CREATE TABLE mine (x int)")
    with pytest.raises(PermanentError, match="closed_db.*nothing was changed|nothing was changed.*closed_db"):
        pgb.remove(t1, purge=True)
    assert pgb.verify(t1, secrets.for_tenant(t1)) == []  # whole: role, password, databases
    with login(pg, t1, secrets, t1.databases[0]) as c:
        c.execute("SELECT * FROM mine")
    with admin(pg) as c:
        c.execute("ALTER DATABASE closed_db ALLOW_CONNECTIONS true")
    pgb.remove(t1, purge=True)
    assert "user1" not in pgb.observe()


def test_rendered_pg_hba_reaches_each_tenant_only_to_its_own_databases():
    """First match wins: from a tenant's address, its own lines, then a reject before any operator
    range (the default 10.0.0.0/16 covers the tenants) could admit it to anything else."""
    site = resolved_site(3)
    rules = [ln.split()[:5] for ln in pg_hba(site).splitlines() if ln.startswith("host")]

    def first_match(ip: str, db: str, user: str):
        for _, dbs, users, addr, method in rules:
            if ipaddress.ip_address(ip) in ipaddress.ip_network(addr) and \
                    (dbs == "all" or db in dbs.split(",")) and users in ("all", user):
                return method
        return None

    t1, t2 = site.tenants[0], site.tenants[1]
    assert first_match(t1.ip, t1.databases[0], t1.postgres_role) == "scram-sha-256"
    for db, user in ((t2.databases[0], t1.postgres_role), ("postgres", t1.postgres_role),
                     ("template1", t1.postgres_role), ("postgres", "postgres"), (t2.databases[0], t2.postgres_role)):
        assert first_match(t1.ip, db, user) in ("reject", None), (db, user)
    gw = str(site.site.network.gateway)  # the control plane (audit): each tenant's own databases only
    assert first_match(gw, t1.databases[0], t1.postgres_role) == "scram-sha-256"
    assert first_match(gw, t2.databases[0], t1.postgres_role) is None
    assert first_match(gw, "postgres", "postgres") == "scram-sha-256"
