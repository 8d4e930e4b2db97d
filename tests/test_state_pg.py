"""The state in PostgreSQL (a postgresql:// URL) instead of an SQLite file, on the REAL PostgreSQL 15
of the `pg` fixture (loopback). Nothing is simulated but the compute driver and tenancy back
ends of the one engine run (file-backed fakes).
"""

from __future__ import annotations

import io
import os
import secrets as pysecrets

import psycopg
import pytest

from aicommons.state import StateError, StateStore
from aicommons.state.secrets import KeySource
from tests.test_engine_support import apply, plan, write_site
from tests.test_state import check_lock_names_holder


@pytest.fixture
def url(pg):
    name = f"state_{pysecrets.token_hex(4)}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{name}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_allocations_secrets_and_runs_in_postgres(url):
    s = StateStore.open(url)
    s.allocate("user1", "10.0.5.200", 200)
    with pytest.raises(StateError, match="held by user user1"):
        s.allocate("user2", "10.0.5.200", 200)
    s.set_allocation_status("user1", "removed")
    assert s.held_slots() == {"user1": "10.0.5.200"}
    keys = KeySource(env=None, passphrase="team passphrase")
    v = s.secrets(keys).get("user1", "postgres_password")
    again = StateStore.open(url)  # a second control host sees the same state
    assert again.secrets(KeySource(env=None, passphrase="team passphrase")).get("user1", "postgres_password") == v
    assert again.secrets(keys).rotate("user1", "postgres_password") == 2
    run = s.begin_run("apply")
    s.journal(run, "container.200", "create", "started")
    assert s.unfinished_steps() == [(run, "container.200", "create")]
    assert s.mark_interrupted()[0][0] == run and s.runs()[0].outcome == "interrupted"
    with psycopg.connect(url) as c:  # encrypted at rest
        assert v.encode() not in b"".join(bytes(r[0]) for r in c.execute("SELECT token FROM secrets"))


def test_newer_schema_in_postgres_is_refused_untouched(url):
    StateStore.open(url).close()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateError, match="newer"):
        StateStore.open(url)
    with psycopg.connect(url) as c:
        assert c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "99"


def test_unreachable_postgres_state_is_a_clear_error(pg):
    with pytest.raises(StateError, match=r"cannot connect to the state database .*:\*\*\*@"):
        StateStore.open(f"postgresql://{pg.user}:wrong-password@{pg.host}:{pg.port}/postgres")


def test_lock_across_processes_in_postgres(url):
    lock, pid = check_lock_names_holder(url)
    lock.acquire()
    assert lock.broken is not None and lock.broken.pid == pid


def test_engine_converges_with_postgres_state(url, tmp_path, monkeypatch):
    monkeypatch.delenv("AICOMMONS_SECRET_KEY", raising=False)
    site = write_site(tmp_path / "site.yaml", users=2)
    r = apply(site, tmp_path / "world", state_path=url, out=io.StringIO())
    assert r.ok, r.errors
    assert plan(site, tmp_path / "world", state_path=url).empty
    assert not (tmp_path / ".aicommons" / "state.db").exists()
    assert os.listdir(tmp_path / ".aicommons" / "logs")
