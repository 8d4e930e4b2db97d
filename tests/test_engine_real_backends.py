"""The engine driving the REAL tenancy back ends: PostgreSQL 15 and Redis 7 on loopback (fixtures
`pg`, `redis_server`), through aicommons.tenancy's PostgresBackend and RedisBackend.

Real: both servers, their roles/databases/ACL users, logins with the stored secrets, the state
store, the planner and runner. Simulated: the compute driver (file-backed fake), since the
containers the servers would run in are not needed to check tenancy.
"""

from __future__ import annotations

import io

import psycopg
import pytest

from aicommons.drivers.fake import FakeDriver
from aicommons.engine.api import apply_site, plan_site
from aicommons.state import StateStore, default_path
from aicommons.tenancy.postgres import PostgresBackend
from aicommons.tenancy.redis import RedisBackend
from tests.test_engine_support import edit_site, test_renderer, write_site

USERS = ["eng-a", "eng-b"]


@pytest.fixture
def world(pg, redis_server, tmp_path, monkeypatch):
    monkeypatch.delenv("AICOMMONS_SECRET_KEY", raising=False)
    site = write_site(tmp_path / "site.yaml", users=1)
    edit_site(site, lambda d: d.update(users=[{"name": n, "email": f"{n}@example.org"} for n in USERS]))
    backends = [PostgresBackend(pg.host, pg.port, pg.user, pg.password, tmp_path / "archive"),
                RedisBackend(redis_server.host, redis_server.port, redis_server.admin_user,
                             redis_server.admin_password, tmp_path / "archive")]
    kw = dict(driver=FakeDriver(tmp_path / "fake"), backends=backends, renderer=test_renderer)
    yield site, backends, kw
    apply_site(site, destroy=True, purge=True, out=io.StringIO(), **kw)


def test_apply_creates_real_tenants_and_converges(world, pg):
    site, (pgb, rb), kw = world
    r = apply_site(site, out=io.StringIO(), **kw)
    assert r.ok, [(o.step, o.detail) for o in r.errors]
    again = plan_site(site, **kw)
    assert again.empty, [(c.address, c.reason) for c in again.changes if c.action != "no-op"]
    st = StateStore.open(default_path(site))
    t = again.resolved.tenant("eng-a")
    secrets = {k: st.secrets().get("eng-a", k) for k in ("postgres_password", "redis_password")}
    assert pgb.verify(t, secrets) == [] and rb.verify(t, secrets) == []
    with psycopg.connect(host=pg.host, port=pg.port, user=t.postgres_role, password=secrets["postgres_password"],
                         dbname=t.databases[0]) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == t.postgres_role


def test_rotation_changes_the_real_password_in_one_apply(world):
    site, (pgb, rb), kw = world
    assert apply_site(site, out=io.StringIO(), **kw).ok
    st = StateStore.open(default_path(site))
    old = st.secrets().get("eng-a", "postgres_password")
    st.secrets().rotate("eng-a", "postgres_password")
    p = plan_site(site, **kw)
    assert set(p.steps) == {"tenant.postgres.eng-a", "bundle.eng-a"}
    assert apply_site(site, out=io.StringIO(), **kw).ok
    t = p.resolved.tenant("eng-a")
    new = st.secrets().get("eng-a", "postgres_password")
    assert pgb.verify(t, {"postgres_password": new}) == []
    assert pgb.verify(t, {"postgres_password": old}) != []


def test_removed_user_is_archived_and_slot_kept(world, tmp_path):
    site, (pgb, rb), kw = world
    assert apply_site(site, out=io.StringIO(), **kw).ok
    edit_site(site, lambda d: d.update(users=[{"name": "eng-a", "email": "eng-a@example.org"}]))
    r = apply_site(site, out=io.StringIO(), **kw)
    assert r.ok, [(o.step, o.detail) for o in r.errors]
    assert {"tenant.postgres.eng-b", "tenant.redis.eng-b", "container.201"} <= set(r.outcomes)
    assert "eng-b" not in pgb.observe() and "eng-b" not in rb.observe()
    assert list((tmp_path / "archive" / "eng-b").glob("openwebui_eng_b-*.dump"))  # archived before removal
    assert StateStore.open(default_path(site)).held_slots()["eng-b"] == "10.0.5.201"
    assert plan_site(site, **kw).empty
