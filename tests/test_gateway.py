"""The model gateway: keys, budgets that hold under parallel requests, streamed usage, windows.

Real: PostgreSQL 15 (the `pg` fixture) holding keys, budgets and usage; the gateway (FastAPI
served by uvicorn on 127.0.0.1) and its clients speaking HTTP; the tenancy back end making and
revoking keys as `users add/suspend/remove` do; promtool checking /metrics.
Simulated: the model server — a deterministic OpenAI-compatible server on loopback
(tests/standins/openai_upstream.py) that streams like llama-server and reports exact usage.
The clock is injected (windows reset at a computed boundary; nothing sleeps to wait for one).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from aicommons.gateway.app import create_app
from aicommons.gateway.config import GatewayConfig
from aicommons.gateway.usage import set_budget, site_usage, standing
from aicommons.spec.models import Budget
from aicommons.tenancy.gateway import create_database
from tests.gateway_harness import People, Served, backend_for, conninfo, tenant
from tests.standins.openai_upstream import OpenAIUpstream, answer

MODEL = "smollm2"


class Clock:
    def __init__(self, now: datetime | None = None):
        self.now = now

    def __call__(self) -> datetime:
        return self.now or datetime.now(UTC)


@pytest.fixture(scope="module")
def upstream():
    up = OpenAIUpstream()
    yield up
    up.stop()


@pytest.fixture
def site(pg, upstream):
    """A fresh gateway database, five people, and a factory for gateways over it."""
    db = f"gw_{uuid.uuid4().hex[:10]}"
    create_database(pg.host, pg.port, pg.user, pg.password, db)
    people = People(backend_for(pg, db))
    for n in ("ann", "bob", "cy", "dee", "eve"):
        people.add(n)
    served: list[Served] = []
    clock = Clock()

    def start(budget: Budget | None = None, routes: dict[str, str] | None = None, **kw) -> Served:
        cfg = GatewayConfig(conninfo=conninfo(pg, db), routes=routes or {MODEL: upstream.url},
                            budget=budget or Budget(period="day"), clock=clock, pool_size=8, **kw)
        s = Served(create_app(cfg))
        served.append(s)
        return s

    class Site:
        pass
    s = Site()
    s.db, s.people, s.start, s.clock, s.conninfo = db, people, start, clock, conninfo(pg, db)
    yield s
    for x in served:
        x.stop()


def chat_body(i: int, *, stream: bool = True, max_tokens: int = 40, usage: bool = False) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"question {i} " + "x" * (i % 37)}],
            "max_tokens": max_tokens, "stream": stream}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def stream_chat(client: httpx.AsyncClient, url: str, key: str, body: dict) -> tuple[int, list[dict], bytes]:
    """(status, the data objects received, the raw body)."""
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as r:
        raw = await r.aread()
    if r.status_code != 200:
        return r.status_code, [], raw
    objs = [json.loads(line[6:]) for line in raw.decode().split("\n\n") if line.startswith("data: ")
            and line != "data: [DONE]"]
    return 200, objs, raw


def usage_rows(pg, db: str) -> dict[str, tuple[int, int]]:
    import psycopg

    with psycopg.connect(conninfo(pg, db)) as c:
        rows = c.execute("SELECT username, sum(prompt_tokens), sum(completion_tokens) FROM gw_usage "
                         "GROUP BY username").fetchall()
    return {u: (int(p), int(q)) for u, p, q in rows}


def windows(pg, db: str) -> dict[str, tuple[int, int]]:
    import psycopg

    with psycopg.connect(conninfo(pg, db)) as c:
        rows = c.execute("SELECT username, sum(tokens_used), sum(tokens_reserved) FROM gw_windows GROUP BY username").fetchall()
    return {u: (int(a), int(b)) for u, a, b in rows}


def wait_settled(pg, db: str) -> None:
    """A stream is settled just after its last byte is sent: wait until no reservation is left."""
    import time

    end = time.monotonic() + 30
    while any(reserved for _u, reserved in windows(pg, db).values()) and time.monotonic() < end:
        time.sleep(0.05)


def test_fifty_concurrent_streams_are_counted_exactly(pg, site, upstream):
    """50 streams from 5 people at once: what is counted per person equals, token for token, the
    usage the model server reported; the usage event reaches only clients that asked for it."""
    gw = site.start()
    names = list(site.people.tokens)
    before = len(upstream.reported)

    async def run():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as c:
            return await asyncio.gather(*[
                stream_chat(c, gw.url, site.people.key(names[i % 5]), chat_body(i, usage=i % 2 == 0))
                for i in range(50)])

    results = asyncio.run(run())
    assert [r[0] for r in results] == [200] * 50
    wait_settled(pg, site.db)
    expected: dict[str, list[int]] = {n: [0, 0] for n in names}
    for i, (_, objs, _raw) in enumerate(results):
        p, q = answer(chat_body(i))
        expected[names[i % 5]][0] += p
        expected[names[i % 5]][1] += q
        text = "".join(o["choices"][0]["delta"]["content"] for o in objs if o["choices"])
        assert text.split() == [f"w{k}" for k in range(q)]
        usage_events = [o for o in objs if not o["choices"]]
        if i % 2 == 0:
            assert [u["usage"]["completion_tokens"] for u in usage_events] == [q]
        else:
            assert usage_events == []
    assert usage_rows(pg, site.db) == {n: tuple(v) for n, v in expected.items()}
    sent = upstream.reported[before:]
    assert sum(p + q for p, q in sent) == sum(a + b for a, b in expected.values())
    assert all(reserved == 0 for _used, reserved in windows(pg, site.db).values())  # every reservation settled


def test_streams_pass_through_unbuffered(site, upstream):
    """The first event reaches the client while the model server holds back the second: the
    stand-in waits after its first chunk until this client has seen that chunk (a buffering
    gateway would leave both waiting, and the stand-in's wait would give up)."""
    import threading

    gw = site.start()
    upstream.gate, upstream.gate_timeouts = threading.Event(), 0
    try:
        seen: list[str] = []
        with httpx.Client(timeout=60) as c, c.stream(
                "POST", f"{gw.url}/v1/chat/completions", json=chat_body(3, max_tokens=8),
                headers={"Authorization": f"Bearer {site.people.key('ann')}"}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    seen.append(line)
                    upstream.gate.set()  # the model server may now send the rest
        assert upstream.gate_timeouts == 0, "the first chunk did not reach the client before the second was sent"
        assert len(seen) == answer(chat_body(3, max_tokens=8))[1]
    finally:
        upstream.gate = None


def test_parallel_requests_cannot_overshoot_a_budget(pg, site, upstream):
    """Budgets of 200 tokens a day, 50 parallel streams of max_tokens 40 (each person's ten would use
    239-259 tokens, so everyone is refused at least once however the requests interleave): no one's
    counted use passes the budget by more than one request's max_tokens — here not at all, since
    the prompt estimate bounds the real prompt."""
    gw = site.start(Budget(period="day", tokens=200))
    names = list(site.people.tokens)

    async def run():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as c:
            return await asyncio.gather(*[
                stream_chat(c, gw.url, site.people.key(names[i % 5]), chat_body(i, max_tokens=40))
                for i in range(50)])

    results = asyncio.run(run())
    wait_settled(pg, site.db)
    for k, n in enumerate(names):
        assert 429 in [r[0] for i, r in enumerate(results) if i % 5 == k], n
    used = usage_rows(pg, site.db)
    for n in names:
        assert sum(used[n]) <= 200 + 40
        assert sum(used[n]) <= 200
    accepted = dict.fromkeys(names, 0)
    for i, r in enumerate(results):
        if r[0] == 200:
            accepted[names[i % 5]] += sum(answer(chat_body(i, max_tokens=40)))
    assert {n: sum(v) for n, v in used.items()} == accepted


def test_parallel_admissions_of_one_person_share_a_statement_and_hold_the_budget(pg, site):
    """Requests of one person arriving while an admission of theirs is in flight are admitted by
    one statement, as a prefix of them that fits; the rest are admitted (or refused) alone."""
    from decimal import Decimal

    from aicommons.gateway import accounting as acc

    for n in ("ann", "bob"):
        set_budget(site.conninfo, n, period="day", tokens=1000, cost=None)

    async def run(name: str, sizes: list[int]) -> tuple[list[int | None], int]:
        pool = acc.Pool(site.conninfo, 4)
        await pool.open()
        adm = acc.Admissions(pool)
        now = datetime.now(UTC)

        async def one(t: int) -> int | None:
            try:
                return (await adm.admit(f"Bearer {site.people.key(name)}", None, Budget(period="day"), t,
                                        Decimal(0), now))[1].tokens
            except acc.OverBudget:
                return None
        try:
            return list(await asyncio.gather(*[one(t) for t in sizes])), adm.together
        finally:
            await pool.close()

    got, together = asyncio.run(run("ann", [150] * 10))  # the first alone, the nine others together
    assert sorted(got, key=lambda x: x or 0) == [None] * 4 + [150] * 6 and together == 5
    assert windows(pg, site.db)["ann"] == (0, 900)
    got, together = asyncio.run(run("bob", [100, 950, 100, 100]))  # 950 does not fit after 100: all alone
    assert got == [100, None, 100, 100] and together == 0
    assert windows(pg, site.db)["bob"] == (0, 300)


def test_a_request_gone_while_waiting_for_admission_leaves_no_reservation(pg, site):
    """A request that queued behind its person's admission and went away before the shared
    statement returned: what the statement reserved for it is given back."""
    from decimal import Decimal

    from aicommons.gateway import accounting as acc

    async def run() -> int:
        pool = acc.Pool(site.conninfo, 2)
        await pool.open()
        adm = acc.Admissions(pool)
        now, key = datetime.now(UTC), f"Bearer {site.people.key('cy')}"
        try:
            lead = asyncio.create_task(adm.admit(key, None, Budget(period="day"), 100, Decimal(0), now))
            await asyncio.sleep(0)  # the first sends its statement and waits for PostgreSQL
            gone = asyncio.create_task(adm.admit(key, None, Budget(period="day"), 200, Decimal(0), now))
            await asyncio.sleep(0)  # the second queues behind it
            gone.cancel()
            await lead
            while adm.tasks:
                await asyncio.gather(*adm.tasks)
            return adm.together
        finally:
            await pool.close()

    assert asyncio.run(run()) == 1  # the second was reserved by the shared statement...
    assert windows(pg, site.db)["cy"] == (0, 100)  # ...and given back


def test_gateway_sessions_commit_without_waiting_for_the_disk(pg, site):
    """Admissions and settlements commit asynchronously (synchronous_commit off in the gateway's
    own sessions only): the path to the first byte has no fsync; other sessions stay as configured."""
    import psycopg

    from aicommons.gateway import accounting as acc

    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:  # the test server runs with it off
        c.execute(f"ALTER DATABASE {site.db} SET synchronous_commit = on")

    async def run() -> tuple[str, str]:
        pool = acc.Pool(site.conninfo, 1)
        await pool.open()
        try:
            async with pool.conn() as c:
                mine = (await (await c.execute("SHOW synchronous_commit")).fetchone())[0]
        finally:
            await pool.close()
        async with await psycopg.AsyncConnection.connect(site.conninfo) as other:
            theirs = (await (await other.execute("SHOW synchronous_commit")).fetchone())[0]
        return mine, theirs

    assert asyncio.run(run()) == ("off", "on")


def test_over_budget_is_429_saying_what_is_left_and_when_it_resets(site):
    site.clock.now = datetime(2026, 12, 7, 15, 30, tzinfo=UTC)
    gw = site.start(Budget(period="day", tokens=100))
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat_body(1, stream=False, max_tokens=500),
                   headers={"Authorization": f"Bearer {site.people.key('ann')}"})
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["type"] == "insufficient_quota" and err["code"] == "insufficient_quota"
    assert "100 of 100 tokens left this day" in err["message"]
    assert "resets at 2026-12-08 00:00 UTC" in err["message"]


def test_window_resets_at_its_boundary(pg, site):
    site.clock.now = datetime(2026, 12, 7, 23, 59, 50, tzinfo=UTC)
    gw = site.start(Budget(period="day", tokens=120))
    key = {"Authorization": f"Bearer {site.people.key('bob')}"}
    body = chat_body(3, stream=False, max_tokens=30)
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=key).status_code == 200
    while (r := httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=key)).status_code == 200:
        pass
    assert r.status_code == 429
    site.clock.now += timedelta(seconds=11)  # 00:00:01 the next day: a new window
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=key).status_code == 200
    s = standing(site.conninfo, "bob", Budget(period="day", tokens=120), site.clock.now)
    assert s.window_start == "2026-12-08T00:00:00+00:00" and s.tokens_used == sum(answer(body))


def test_operator_raises_a_budget_without_restart(site):
    gw = site.start(Budget(period="day", tokens=10))
    key = {"Authorization": f"Bearer {site.people.key('cy')}"}
    body = chat_body(2, stream=False, max_tokens=20)
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=key).status_code == 429
    set_budget(site.conninfo, "cy", period="week", tokens=10_000, cost=None)
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=key).status_code == 200


def test_bad_suspended_and_removed_keys_get_401(site):
    gw = site.start()
    url, body = f"{gw.url}/v1/chat/completions", chat_body(1, stream=False)

    def code(key: str) -> int:
        return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}).status_code
    good = site.people.key("dee")
    assert code(good) == 200
    assert code(good[:-1] + ("A" if good[-1] != "A" else "B")) == 401
    assert code(site.people.key("eve").replace("aic.eve.", "aic.dee.")) == 401  # someone else's token
    assert httpx.post(url, json=body).status_code == 401
    backend = site.people.backend
    backend.suspend(tenant("dee"))
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {good}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    backend.resume(tenant("dee"), {"gateway_key": site.people.tokens["dee"]})
    assert code(good) == 200
    backend.remove(tenant("dee"))
    assert code(good) == 401


def test_usage_survives_a_restart_and_is_exported(pg, site):
    gw = site.start()
    key = {"Authorization": f"Bearer {site.people.key('ann')}~openwebui"}
    body = chat_body(5, stream=False)
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=key).status_code == 200
    gw.stop()
    gw2 = site.start()
    text = httpx.get(f"{gw2.url}/metrics").text
    p, q = answer(body)
    assert f'aicommons_gateway_prompt_tokens_total{{user="ann",model="{MODEL}",app="openwebui"}} {p}' in text
    assert f'aicommons_gateway_completion_tokens_total{{user="ann",model="{MODEL}",app="openwebui"}} {q}' in text
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    over = site_usage(site.conninfo, datetime.now(UTC), days=1, bucket="hour")
    assert {(t["user"], t["app"], t["prompt_tokens"], t["completion_tokens"]) for t in over["totals"]} == {
        ("ann", "openwebui", p, q)}


def test_openai_routes_and_errors(site, upstream):
    site.clock.now = None
    gw = site.start(prices={MODEL: __import__("aicommons.gateway.config", fromlist=["Price"]).Price(
        prompt=__import__("decimal").Decimal("0.001"), completion=__import__("decimal").Decimal("0.002"))})
    h = {"Authorization": f"Bearer {site.people.key('eve')}", "X-Aicommons-App": "jupyter"}
    models = httpx.get(f"{gw.url}/v1/models", headers=h).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    r = httpx.post(f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 7}, headers=h)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == answer({"prompt": "hello", "max_tokens": 7})[1]
    e = httpx.post(f"{gw.url}/v1/embeddings", json={"model": MODEL, "input": ["a b", "c"]}, headers=h)
    assert e.status_code == 200 and len(e.json()["data"]) == 2
    n = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "gpt-9", "messages": []}, headers=h)
    assert n.status_code == 404 and "does not exist here" in n.json()["error"]["message"]
    bad = httpx.post(f"{gw.url}/v1/chat/completions", json={**chat_body(1), "max_tokens": -3}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    # a request without max_tokens is capped at the default, so its reservation holds
    httpx.post(f"{gw.url}/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "q"}]},
               headers=h)
    assert upstream.requests[-1]["max_tokens"] == 1024
    s = standing(site.conninfo, "eve", Budget(period="day"), datetime.now(UTC))
    assert {r["app"] for r in s.by_model_app} == {"jupyter"}
    cost = sum(r["cost"] for r in s.by_model_app)
    toks_p = sum(r["prompt_tokens"] for r in s.by_model_app)
    toks_c = sum(r["completion_tokens"] for r in s.by_model_app)
    assert cost == pytest.approx(toks_p * 0.001 + toks_c * 0.002)


def test_tenancy_backend_verify_and_audit(site):
    b = site.people.backend
    ann = tenant("ann")
    assert b.verify(ann, {"gateway_key": site.people.tokens["ann"]}) == []
    assert b.verify(ann, {"gateway_key": "rotated"}) == ["gateway key of ann does not match the site's secret"]
    assert b.observe()["ann"] == {"gateway.key.ann"}
    secrets = {n: {"gateway_key": t} for n, t in site.people.tokens.items()}
    checks = b.audit([tenant(n) for n in secrets], secrets)
    assert len(checks) == 25 and all(c.ok for c in checks)


def test_browser_apps_of_the_site_may_call_it(site):
    """ChainForge calls the model from the browser: the gateway answers the CORS preflight of the
    site's own pages, and no other origin's."""
    gw = site.start(cors_origin_regex=r"https://([a-z0-9-]+\.)*example\.org")
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    ok = httpx.options(f"{gw.url}/v1/chat/completions", headers={"Origin": "https://cf-ann.example.org", **pre})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://cf-ann.example.org"
    bad = httpx.options(f"{gw.url}/v1/chat/completions", headers={"Origin": "https://example.org.evil.test", **pre})
    assert "access-control-allow-origin" not in bad.headers


def test_budget_and_usage_commands(site, tmp_path, capsys):
    from aicommons.cli import main

    f = tmp_path / "site.yaml"
    f.write_text("version: 1\nname: gwcli\ndomain: example.org\ndriver: {kind: lxc}\n"
                 "services: {postgres: {}, gateway: {}}\nusers: [{name: ann, email: ann@example.org}]\n")
    base = ["-f", str(f), "--database", site.conninfo]
    assert main(["users", "budget", "ann", "--period", "year", *base]) == 2
    assert "use day, week or month" in capsys.readouterr().err
    assert main(["users", "budget", "nobody", "--tokens", "5", *base]) == 2
    assert main(["users", "budget", "ann", "--period", "week", "--tokens", "777", *base]) == 0
    assert main(["users", "usage", "ann", "--json", *base]) == 0
    out = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert (out["period"], out["tokens_limit"], out["own_budget"]) == ("week", 777, True)
    assert main(["users", "budget", "ann", "--default", *base]) == 0


def test_database_down_is_503_not_a_free_call(pg, site, upstream):
    """With the accounting database gone, no request reaches the model server (a budget that
    cannot be checked is not bypassed) and the client gets OpenAI's error shape."""
    import psycopg

    gw = site.start()
    key = {"Authorization": f"Bearer {site.people.key('ann')}"}
    before = len(upstream.requests)
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:  # the database goes away
        c.execute(f"ALTER DATABASE {site.db} ALLOW_CONNECTIONS false")
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (site.db,))
    for _ in range(3):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat_body(1, stream=False), headers=key)
        assert r.status_code == 503 and r.json()["error"]["code"] == "accounting_unavailable"
    assert len(upstream.requests) == before
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:  # and comes back
        c.execute(f"ALTER DATABASE {site.db} ALLOW_CONNECTIONS true")
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=chat_body(1, stream=False), headers=key).status_code == 200


def test_model_server_unreachable_is_502_and_charges_nothing(pg, site):
    """A model server that refuses connections: 502 in OpenAI's shape, the reservation released."""
    from tests.servers import free_port

    gw = site.start(routes={MODEL: f"http://127.0.0.1:{free_port()}/v1"})
    key = {"Authorization": f"Bearer {site.people.key('ann')}"}
    for stream in (True, False):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=chat_body(2, stream=stream), headers=key)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
    assert windows(pg, site.db).get("ann", (0, 0)) == (0, 0)
    assert usage_rows(pg, site.db) == {}


def test_model_server_gone_mid_stream_is_charged_its_estimate(pg, site, upstream):
    """The model server drops the connection after two chunks: the client's stream ends early, and
    the request is charged (prompt estimate + what was seen, marked unmetered), not left reserved."""
    import psycopg

    gw = site.start()
    upstream.break_after = 2
    try:
        with pytest.raises(httpx.HTTPError):  # the gateway cannot end the stream cleanly: it aborts it
            asyncio.run(stream_chat(httpx.AsyncClient(timeout=30), gw.url, site.people.key("bob"), chat_body(5)))
    finally:
        upstream.break_after = None
    wait_settled(pg, site.db)
    with psycopg.connect(site.conninfo) as c:
        unmetered, completion = c.execute("SELECT sum(unmetered), sum(completion_tokens) FROM gw_usage "
                                          "WHERE username = 'bob'").fetchone()
    assert unmetered == 1 and completion == 1  # what was seen, less one event (the relay's rule for a stream cut short)
    assert windows(pg, site.db)["bob"][1] == 0


def test_client_gone_mid_stream_is_charged_without_waiting_for_the_model_server(pg, site, upstream):
    """The client leaves after the first event while the model server holds back the rest: the
    gateway settles (the estimate and what was seen, unmetered), not waiting for the model server."""
    import threading

    import psycopg

    gw = site.start()
    upstream.gate, upstream.gate_timeouts = threading.Event(), 0
    try:
        with httpx.Client(timeout=60) as c, c.stream(
                "POST", f"{gw.url}/v1/chat/completions", json=chat_body(4, max_tokens=8),
                headers={"Authorization": f"Bearer {site.people.key('dee')}"}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    break  # leaves: the connection is closed with the stream unread
        wait_settled(pg, site.db)  # while the model server still waits at its gate
        with psycopg.connect(site.conninfo) as c:
            unmetered = c.execute("SELECT sum(unmetered) FROM gw_usage WHERE username = 'dee'").fetchone()[0]
        assert unmetered == 1 and windows(pg, site.db)["dee"][1] == 0
    finally:
        upstream.gate.set()
        upstream.gate = None
