"""Service isolation of the shared PostgreSQL (issue 23, attacks 4 and 5) against the REAL Debian
PostgreSQL 15 (fixture `pg`, loopback). Tenants are made by the real `PostgresBackend.ensure`;
each attack is the tenant's own login doing what the server lets a database owner do. The
removal's failure injection wraps the backend's own connections: the statement named fails as
the server would fail it (a dropped connection), everything else is the real server.
"""

from __future__ import annotations

import psycopg
import pytest

from aicommons.ops.backup.postgres import Server, list_databases
from aicommons.tenancy.postgres import PostgresBackend
from tests.standins.helpers import DictSecrets, resolved_site
from tests.test_pg_isolation import admin, login


@pytest.fixture
def world(pg, tmp_path):
    site = resolved_site(3)
    secrets = DictSecrets()
    pgb = PostgresBackend(pg.host, pg.port, pg.user, pg.password, tmp_path / "archive")
    for t in site.tenants:
        pgb.ensure(t, secrets.for_tenant(t))
    yield site.tenants, secrets, pgb
    with admin(pg) as c:  # whatever a failed test left flagged
        c.execute("UPDATE pg_database SET datistemplate = false, datallowconn = true "
                  "WHERE datname ~ '_user[0-9]+$'")
    for t in site.tenants:
        pgb.remove(t, purge=True)


def flags(pg, db):
    with admin(pg) as c:
        return c.execute("SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s", (db,)).fetchone()


def test_attack4_database_flags_are_detected_reset_and_cannot_block_removals(world, pg, tmp_path):
    """Issue 23 #4: an owner's `ALTER DATABASE … IS_TEMPLATE true` / `ALLOW_CONNECTIONS false`
    refused another user's removal, stopped its own half-way on every re-run, and fell out of
    the site backup."""
    tenants, secrets, pgb = world
    a, b = tenants[0], tenants[1]
    db_a, db_b = a.databases[0], a.databases[1]
    with login(pg, a, secrets, db_a) as c:  # B holds a privilege in A's database: A granted it
        c.execute("CREATE TABLE shared_with_b (x int)")
        c.execute("GRANT SELECT ON shared_with_b TO u_user2")
        c.execute(f'ALTER DATABASE "{db_a}" IS_TEMPLATE true')
        c.execute(f'ALTER DATABASE "{db_b}" ALLOW_CONNECTIONS false')
    with login(pg, a, secrets, a.databases[2]) as c:
        c.execute(f'ALTER DATABASE "{db_a}" ALLOW_CONNECTIONS false')
    # the backup does not silently skip them
    srv = Server(pg.host, pg.port, pg.user, pg.password)
    try:
        listed = list_databases(srv)
    except Exception as exc:  # noqa: BLE001 - a loud refusal naming the database is as good
        assert db_a in str(exc) and db_b in str(exc)
    else:
        assert db_a in listed and db_b in listed
    # verify sees it, ensure undoes it
    problems = " ".join(pgb.verify(a, secrets.for_tenant(a)))
    assert db_a in problems and "template" in problems and db_b in problems and "connections" in problems
    pgb.ensure(a, secrets.for_tenant(a))
    assert flags(pg, db_a) == (False, True) and flags(pg, db_b) == (False, True)
    assert pgb.verify(a, secrets.for_tenant(a)) == []
    # set again: neither B's removal nor A's own stops
    with login(pg, a, secrets, db_a) as c:
        c.execute(f'ALTER DATABASE "{db_a}" IS_TEMPLATE true')
    with login(pg, a, secrets, db_b) as c:
        c.execute(f'ALTER DATABASE "{db_a}" ALLOW_CONNECTIONS false')
    assert pgb.removal_blockers(b) == []
    pgb.remove(b, purge=True)
    pgb.remove(a, purge=True)
    assert "user1" not in pgb.observe() and "user2" not in pgb.observe()


def test_attack5_tenant_sessions_are_bounded_and_the_superuser_only_bounds_cannot_be_lifted(world, pg):
    """Issue 23 #5: no statement_timeout, idle_in_transaction_session_timeout, temp_file_limit or
    work_mem bound per tenant."""
    tenants, secrets, pgb = world
    a = tenants[0]
    with login(pg, a, secrets, a.databases[0]) as c:
        shown = {k: c.execute(f"SHOW {k}").fetchone()[0]
                 for k in ("statement_timeout", "idle_in_transaction_session_timeout", "temp_file_limit",
                           "work_mem")}
        assert shown["statement_timeout"] != "0" and shown["idle_in_transaction_session_timeout"] != "0"
        assert shown["temp_file_limit"] != "-1" and shown["work_mem"] != "4MB"
        # temp_file_limit is superuser-only (PGC_SUSET): the tenant cannot lift it
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SET temp_file_limit = -1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f'ALTER ROLE "{a.postgres_role}" SET temp_file_limit = -1')
    problems = pgb.verify(a, secrets.for_tenant(a))
    assert problems == []
    with admin(pg) as c:
        c.execute(f'ALTER ROLE "{a.postgres_role}" RESET statement_timeout')
    assert any("statement_timeout" in p for p in pgb.verify(a, secrets.for_tenant(a)))
    pgb.ensure(a, secrets.for_tenant(a))
    assert pgb.verify(a, secrets.for_tenant(a)) == []


class _Flaky:
    """A real connection whose N-th statement (counted across the backend's connections) fails as a
    dropped connection would."""

    def __init__(self, conn, box: dict):
        self.conn, self.box = conn, box

    def __enter__(self):
        self.conn.__enter__()
        return self

    def __exit__(self, *exc):
        return self.conn.__exit__(*exc)

    def execute(self, *args, **kw):
        self.box["n"] += 1
        if self.box["n"] == self.box["fail_at"]:
            raise psycopg.OperationalError(f"injected failure at statement {self.box['n']}")
        return self.conn.execute(*args, **kw)


class _FlakyBackend(PostgresBackend):
    box: dict

    def _connect(self, user=None, password=None, dbname="postgres"):
        return _Flaky(super()._connect(user, password, dbname), self.box)


def _plant(pg, secrets, a, b):
    """A's worst: its databases flagged, a privilege B granted it in B's database."""
    with login(pg, b, secrets, b.databases[0]) as c:
        c.execute("CREATE TABLE IF NOT EXISTS for_a (x int)")
        c.execute("GRANT SELECT ON for_a TO u_user1")
    with login(pg, a, secrets, a.databases[0]) as c:
        c.execute(f'ALTER DATABASE "{a.databases[0]}" IS_TEMPLATE true')
        c.execute(f'ALTER DATABASE "{a.databases[1]}" ALLOW_CONNECTIONS false')


def test_removal_cannot_strand_whichever_statement_fails(world, pg):
    """Failure injection at every statement of `remove`: each interrupted removal is completed by a
    plain re-run, and the other tenants stay whole."""
    tenants, secrets, pgb = world
    a, b = tenants[0], tenants[1]
    flaky = _FlakyBackend(pg.host, pg.port, pg.user, pg.password, pgb.archive_dir)
    flaky.box = {"n": 0, "fail_at": 0}
    _plant(pg, secrets, a, b)
    flaky.remove(a, purge=True)  # a clean run counts the statements
    total = flaky.box["n"]
    assert total >= 10
    for fail_at in range(1, total + 1):
        pgb.ensure(a, secrets.for_tenant(a))
        _plant(pg, secrets, a, b)
        flaky.box.update(n=0, fail_at=fail_at)
        try:
            flaky.remove(a, purge=True)
        except psycopg.OperationalError:
            pass
        pgb.remove(a, purge=True)  # the re-run
        assert "user1" not in pgb.observe(), f"stranded after a failure at statement {fail_at}"
        assert pgb.verify(b, secrets.for_tenant(b)) == []
