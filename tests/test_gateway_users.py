"""Keys follow the user lifecycle: `users add` (an apply) stores the hash of each person's key in
the gateway's database, `users show --secrets` gives the key, `users suspend` revokes it at once,
`resume` restores it, `users remove` deletes it — and the gateway answers 401 to a revoked key.

Real: the engine (planner, runner, state with encrypted secrets), the gateway tenancy back end,
PostgreSQL 15, the gateway served on loopback. Simulated: the compute driver (file-backed fake)
and the model server (the deterministic OpenAI-compatible stand-in).
"""

from __future__ import annotations

import io

import httpx
import pytest

from aicommons.drivers.fake import FakeDriver
from aicommons.engine.api import apply_site, plan_site
from aicommons.gateway.app import create_app
from aicommons.gateway.config import GatewayConfig
from aicommons.ops.users import set_suspended, show_user
from tests.gateway_harness import Served, backend_for, conninfo
from tests.standins.openai_upstream import OpenAIUpstream
from tests.test_engine_support import edit_site, test_renderer, write_site

DB = "gw_users_test"


@pytest.fixture
def world(pg, tmp_path, monkeypatch):
    monkeypatch.delenv("AICOMMONS_SECRET_KEY", raising=False)
    site = write_site(tmp_path / "site.yaml", users=1)

    def edit(d):
        d["services"]["gateway"] = {}
        d["gateway"] = {"database": DB, "upstreams": [{"url": "http://127.0.0.1:9/v1", "models": ["smollm2"]}]}
        d["users"] = [{"name": "kim", "email": "kim@example.org"}, {"name": "lou", "email": "lou@example.org"}]
    edit_site(site, edit)
    gb = backend_for(pg, DB)
    kw = dict(driver=FakeDriver(tmp_path / "fake"), backends=[gb], renderer=test_renderer)
    up = OpenAIUpstream()
    yield site, gb, kw, up
    up.stop()
    with __import__("psycopg").connect(pg.admin_dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def test_key_lifecycle(world, pg):
    site, gb, kw, up = world
    r = apply_site(site, out=io.StringIO(), **kw)
    assert r.ok, [(o.step, o.detail) for o in r.errors]
    assert {"tenant.gateway.kim", "tenant.gateway.lou"} <= set(r.outcomes)
    assert plan_site(site, **kw).empty
    assert set(gb.observe()) == {"kim", "lou"}
    shown = show_user(site, "kim", reveal=True)["gateway"]
    hidden = show_user(site, "kim")["gateway"]
    assert hidden["key"] == "********" and shown["key"].startswith("aic.kim.")
    assert "gateway_key" not in show_user(site, "kim", reveal=True)["app_secrets"]
    gw = Served(create_app(GatewayConfig(conninfo=conninfo(pg, DB), routes={"smollm2": up.url})))
    try:
        def status() -> int:
            return httpx.post(f"{gw.url}/v1/chat/completions", headers={"Authorization": f"Bearer {shown['key']}"},
                              json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}],
                                    "max_tokens": 4}).status_code
        assert status() == 200
        set_suspended(site, "kim", True, backends=[gb])
        assert status() == 401
        set_suspended(site, "kim", False, backends=[gb])
        assert status() == 200
        # what `users remove` does before its apply
        edit_site(site, lambda d: d.update(users=[{"name": "lou", "email": "lou@example.org"}]))
        r = apply_site(site, out=io.StringIO(), **kw)
        assert r.ok, [(o.step, o.detail) for o in r.errors]
        assert status() == 401
        assert set(gb.observe()) == {"lou"}
    finally:
        gw.stop()
