"""The portal's usage API over the gateway's database: a person sees their own usage against their
budget, an operator sees everyone's over time, a person who is no operator does not.

Real: the portal app (FastAPI, called over ASGI from a loopback peer it trusts, as Traefik is),
its state (SQLite, encrypted secrets), PostgreSQL 15 as the site's `external:` server, the
gateway (uvicorn on loopback) writing usage. Simulated: the model server (the deterministic
OpenAI-compatible stand-in) and Authentik (its forward-auth headers, sent by the test as Traefik would).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from aicommons.gateway.app import create_app as gateway_app
from aicommons.gateway.config import GatewayConfig
from aicommons.portal.app import create_app as portal_app
from aicommons.portal.config import PortalConfig, parse_proxies
from aicommons.spec.models import Budget
from tests.gateway_harness import People, Served, backend_for, conninfo
from tests.standins.openai_upstream import OpenAIUpstream, answer

SITE = """version: 1
name: gwportal
domain: example.org
driver: {{kind: lxc}}
services:
  postgres:
    external: {{host: 127.0.0.1, port: {port}, admin_user: postgres, admin_password: "env:AIC_TEST_PG"}}
  gateway: {{}}
  ollama: {{}}
user_template: {{apps: [jupyter]}}
gateway:
  database: {db}
  upstreams: [{{url: "{url}", models: [smollm2]}}]
  budget: {{period: week, tokens: 5000}}
users: [{{name: ann, email: ann@example.org}}, {{name: bob, email: bob@example.org}}]
"""


@pytest.fixture
def world(pg, tmp_path, monkeypatch):
    monkeypatch.setenv("AIC_TEST_PG", pg.password)
    monkeypatch.delenv("AICOMMONS_GATEWAY_DATABASE", raising=False)
    up = OpenAIUpstream()
    db = "gw_portal_test"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(SITE.format(port=pg.port, db=db, url=up.url))
    people = People(backend_for(pg, db))
    people.add("ann")
    people.add("bob")
    gw = Served(gateway_app(GatewayConfig(conninfo=conninfo(pg, db), routes={"smollm2": up.url},
                                          budget=Budget(period="week", tokens=5000))))
    portal = portal_app(PortalConfig(site_file=site_file, trusted_proxies=parse_proxies(["127.0.0.1"])))
    yield gw, portal, people
    gw.stop()
    up.stop()
    with __import__("psycopg").connect(pg.admin_dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _get(portal, path: str, user: str, groups: str = "") -> httpx.Response:
    async def go():
        t = httpx.ASGITransport(app=portal, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=t, base_url="http://portal.example.org") as c:
            return await c.get(path, headers={"X-authentik-username": user, "X-authentik-groups": groups})
    return asyncio.run(go())


def test_my_usage_and_everyones(world):
    gw, portal, people = world
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 9}
    for _ in range(2):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {people.key('ann')}~openwebui"})
        assert r.status_code == 200
    p, q = answer(body)
    mine = _get(portal, "/api/me/usage", "ann")
    assert mine.status_code == 200, mine.text
    m = mine.json()
    assert (m["tokens_used"], m["tokens_limit"], m["tokens_left"], m["period"]) == (2 * (p + q), 5000, 5000 - 2 * (p + q), "week")
    assert m["by_model_app"] == [{"model": "smollm2", "app": "openwebui", "requests": 2, "prompt_tokens": 2 * p,
                                  "completion_tokens": 2 * q, "cost": 0.0}]
    assert _get(portal, "/api/me/usage", "bob").json()["tokens_used"] == 0
    assert _get(portal, "/api/usage", "bob").status_code == 403
    every = _get(portal, "/api/usage?bucket=hour&days=1", "ops", "aicommons-operators")
    assert every.status_code == 200, every.text
    assert [(s["user"], s["prompt_tokens"]) for s in every.json()["series"]] == [("ann", 2 * p)]
    # the pages: her own use on her page, everyone's (chart and table) on the console
    page = _get(portal, "/fragments/my-usage", "ann")
    assert page.status_code == 200 and f'id="tokens-used">{2 * (p + q)} of 5000<' in page.text, page.text
    assert "<td data-label=\"App\">openwebui</td>" in page.text and "The site's default budget" in page.text
    assert "No model use in this window yet." in _get(portal, "/fragments/my-usage", "bob").text
    assert _get(portal, "/fragments/usage", "bob").status_code == 403
    console = _get(portal, "/fragments/usage", "ops", "aicommons-operators")
    assert console.status_code == 200 and f"{2 * (p + q)} tokens since" in console.text, console.text
    assert 'class="bar" title="' in console.text and '<td data-label="Person">ann</td>' in console.text
