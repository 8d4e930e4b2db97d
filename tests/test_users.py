"""`users add/remove/show/list/suspend/resume` and `audit isolation`, end to end through the engine.

REAL: PostgreSQL 15 and Redis 7 (fixtures `pg`, `redis_server`), adopted as `external:` servers
with admin credentials from env: references; the state store (SQLite, encrypted secrets); the
site.yaml round trip. SIMULATED: the container driver (the engine's FakeDriver, file-backed).
"""

from __future__ import annotations

import json

import psycopg
import pytest
import redis as redislib

from aicommons.cli import main
from aicommons.drivers.fake import FakeDriver
from aicommons.errors import SiteInvalid
from aicommons.ops import users as manage

SITE = """\
# a small site for the users tests
version: 1
name: testsite
domain: example.org
driver: {{kind: lxc}}
services:
  ollama: {{}}   # shared, nothing per user
  postgres:
    external: {{host: 127.0.0.1, port: {pg}, admin_user: postgres, admin_password: "env:AIC_TEST_PG"}}
  redis:
    external: {{host: 127.0.0.1, port: {redis}, admin_user: admin, admin_password: "env:AIC_TEST_REDIS"}}
user_template:
  apps: [n8n, jupyter]  # n8n keeps its data in PostgreSQL
backups:
  dir: backups
users:
  - name: alice   # the first user
    email: alice@example.org
"""


@pytest.fixture
def site(pg, redis_server, tmp_path, monkeypatch):
    monkeypatch.setenv("AIC_TEST_PG", pg.password)
    monkeypatch.setenv("AIC_TEST_REDIS", redis_server.admin_password)
    monkeypatch.delenv("AICOMMONS_FAKE_DIR", raising=False)
    f = tmp_path / "site.yaml"
    f.write_text(SITE.format(pg=pg.port, redis=redis_server.port))
    yield f
    with manage.Context(f) as ctx:  # leave the shared servers clean for other tests
        for t in ctx.resolved.tenants:
            for b in ctx.backends:
                b.remove(t, purge=True)


def add(site, name, tmp_path, **kw):
    kw.setdefault("email", f"{name}@example.org")
    added, result = manage.add_user(site, name, driver=FakeDriver(tmp_path / "fake"), **kw)
    return result


def cli(*args):
    return main(list(args))


def test_add_three_users_audit_passes_then_weakened_grant_fails(site, tmp_path, pg, capsys):
    assert add(site, "alice", tmp_path).ok  # already in the file: provisioning only
    assert add(site, "bob", tmp_path).ok
    assert add(site, "carol", tmp_path).ok
    text = site.read_text()
    assert "# the first user" in text and "# shared, nothing per user" in text  # comments survive
    assert [" ".join(line.split()) for line in text.splitlines() if "name:" in line][-3:] == [
        "- name: alice # the first user", "- name: bob", "- name: carol"]
    capsys.readouterr()
    assert cli("audit", "isolation", "-f", str(site)) == 0
    assert "isolation holds" in capsys.readouterr().out
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute("GRANT CONNECT ON DATABASE n8n_alice TO PUBLIC")
    assert cli("audit", "isolation", "-f", str(site), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["leaks"] == 4 and {c["actor"] for c in report["checks"] if not c["ok"]} == {"bob", "carol"}  # login + grant


def test_show_redacts_unless_asked_and_list(site, tmp_path, capsys):
    assert add(site, "bob", tmp_path).ok
    capsys.readouterr()
    assert cli("users", "show", "bob", "-f", str(site), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["postgres"]["password"] == manage.REDACTED and info["postgres"]["user"] == "u_bob"
    assert info["redis"]["key_prefix"] == "t:bob:" and info["urls"]["n8n"] == "https://n8n-bob.example.org"
    assert info["app_logins"]["n8n"]["password"] == manage.REDACTED
    assert cli("users", "show", "bob", "-f", str(site), "--json", "--secrets") == 0
    shown = json.loads(capsys.readouterr().out)
    pw = shown["redis"]["password"]
    assert pw != manage.REDACTED
    # n8n's pre-made owner: the e-mail and password the person signs in to n8n with, whose bcrypt
    # is what the rendered N8N_INSTANCE_OWNER_PASSWORD_HASH holds (checked against the real n8n in
    # tests/test_native_apps.py)
    login = shown["app_logins"]["n8n"]
    assert login["url"] == "https://n8n-bob.example.org" and login["email"].startswith("bob")
    assert login["password"] != manage.REDACTED and login["password"].startswith("Aa1-")
    r = redislib.Redis(port=info["redis"]["port"], username="u_bob", password=pw)
    assert r.set("t:bob:x", "1")
    assert cli("users", "list", "-f", str(site), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(x["user"], x["status"]) for x in rows] == [("alice", "planned"), ("bob", "active")]


def test_remove_one_user_others_untouched(site, tmp_path, capsys):
    for n in ("alice", "bob"):
        assert add(site, n, tmp_path).ok
    res = manage.remove_user(site, "bob", driver=FakeDriver(tmp_path / "fake"))
    assert res.ok
    assert "bob" not in manage.user_names(site)
    assert list((tmp_path / "backups" / "removed" / "bob").glob("n8n_bob-*.dump"))
    with manage.Context(site) as ctx:
        t = ctx.tenant("alice")
        for b in ctx.backends:
            assert b.verify(t, ctx.tenant_secrets(t)) == []
            assert "bob" not in b.observe()
    capsys.readouterr()
    assert cli("audit", "isolation", "-f", str(site)) == 0


def test_redis_down_mid_add_is_completed_by_the_next_add(site, tmp_path, redis_server):
    assert add(site, "alice", tmp_path).ok
    redis_server.stop()
    try:
        res = add(site, "dave", tmp_path)
        assert not res.ok
    finally:
        redis_server.start()
    assert manage.user_names(site).count("dave") == 1
    assert add(site, "dave", tmp_path).ok  # the re-run completes; nothing is added twice
    assert manage.user_names(site).count("dave") == 1
    with manage.Context(site) as ctx:
        for name in ("alice", "dave"):
            t = ctx.tenant(name)
            for b in ctx.backends:
                assert b.verify(t, ctx.tenant_secrets(t)) == []
        assert sorted(ctx.backends[0].observe()) == ["alice", "dave"]


def test_suspend_and_resume(site, tmp_path, capsys):
    assert add(site, "alice", tmp_path).ok
    assert cli("users", "suspend", "alice", "-f", str(site)) == 0
    assert cli("audit", "isolation", "-f", str(site)) == 1  # own access no longer works
    assert cli("users", "resume", "alice", "-f", str(site)) == 0
    assert cli("audit", "isolation", "-f", str(site)) == 0


@pytest.mark.parametrize("bad", ["Bob", "bob'; DROP ROLE postgres; --", "bob$(reboot)", "bøb", "bob name",
                                 "bob\n", "-bob", "bob--x", "b\"o", "a" * 64, "bob;"])
def test_bad_names_are_refused_before_anything_changes(site, bad, capsys):
    before = site.read_bytes()
    with pytest.raises(SiteInvalid, match="users"):
        manage.validate_new_user(bad, None)
    assert cli("users", "add", "-f", str(site), "--", bad) == 2
    assert "users[+].name" in capsys.readouterr().err
    assert site.read_bytes() == before


def test_remove_unknown_user_is_a_clear_error(site, capsys):
    assert cli("users", "remove", "zed", "-f", str(site)) == 2
    err = capsys.readouterr().err
    assert "no user 'zed'" in err and "users list" in err and "Traceback" not in err


def test_append_keeps_layout_and_comments(tmp_path):
    text = SITE.format(pg=5432, redis=6379).replace(
        "  - name: alice   # the first user\n    email: alice@example.org\n",
        "  - name: alice   # the first user\n    email: alice@example.org\n# people above\nmodels: []\n")
    out = manage._append_text(text, {"name": "bob", "email": "bob@example.org"})
    assert out == text.replace("# people above", '  - name: bob\n    email: "bob@example.org"\n# people above')
    # layouts the fast path does not handle fall back to the ruamel round trip, comments kept
    for users in ("users: []  # none yet\n", "users: [{name: alice, email: a@example.org}]  # flow\n", ""):
        f = tmp_path / "s.yaml"
        f.write_text(SITE.format(pg=5432, redis=6379).split("users:")[0] + users)
        assert manage.append_user(f, manage.validate_new_user("bob", "bob@example.org"))
        assert manage.user_names(f)[-1] == "bob" and "# a small site" in f.read_text()
        assert not manage.append_user(f, manage.validate_new_user("bob", "bob@example.org"))  # a re-run adds nothing


def test_remove_keep_data_then_add_again_adopts_it(site, tmp_path, pg):
    from aicommons.engine.api import apply_site

    for n in ("alice", "bob"):
        assert add(site, n, tmp_path).ok
    with manage.Context(site) as ctx:
        s = ctx.tenant_secrets(ctx.tenant("bob"))
    dsn = dict(host=pg.host, port=pg.port, user="u_bob", password=s["postgres_password"], dbname="n8n_bob")
    with psycopg.connect(**dsn, autocommit=True) as c:
        c.execute("CREATE TABLE notes (t text)")
        c.execute("INSERT INTO notes VALUES ('keep me')")
    assert manage.remove_user(site, "bob", keep_data=True, driver=FakeDriver(tmp_path / "fake")).ok
    assert "bob" not in manage.user_names(site)
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        psycopg.connect(**dsn)
    # a later apply of the whole site leaves the kept data alone
    assert apply_site(site, driver=FakeDriver(tmp_path / "fake"), yes=True).ok
    with psycopg.connect(pg.admin_dsn.replace("dbname=postgres", "dbname=n8n_bob")) as c:
        assert c.execute("SELECT t FROM notes").fetchall() == [("keep me",)]
    assert add(site, "bob", tmp_path).ok  # back, with data and logins
    with psycopg.connect(**dsn) as c:
        assert c.execute("SELECT t FROM notes").fetchall() == [("keep me",)]


def test_suspend_with_a_back_end_down_reports_it_and_does_the_rest(site, tmp_path, redis_server, pg):
    from aicommons.errors import AicError

    assert add(site, "alice", tmp_path).ok
    redis_server.stop()
    try:
        with pytest.raises(AicError, match=r"finished in postgres but not in: redis"):
            manage.set_suspended(site, "alice", True)
    finally:
        redis_server.start()
    with psycopg.connect(pg.admin_dsn) as c:
        assert c.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'u_alice'").fetchone() == (False,)
    assert manage.set_suspended(site, "alice", True) == ["postgres", "redis"]
    assert manage.set_suspended(site, "alice", False) == ["postgres", "redis"]


def test_usage_errors_are_clean(capsys):
    assert cli("users", "add", "-bob") == 2  # an option-like name: click's usage error, not a traceback
    err = capsys.readouterr().err
    assert "No such option" in err and "internal error" not in err


def test_a_new_user_without_an_email_is_refused(site, capsys):
    before = site.read_bytes()
    assert cli("users", "add", "bob", "-f", str(site)) == 2
    err = capsys.readouterr().err
    assert "users[+].email" in err and "--email" in err and "Traceback" not in err
    assert site.read_bytes() == before


@pytest.mark.parametrize("email", ["bob'@example.org", "bob@example.org; rm -rf /", "bob", "b\"@x.org"])
def test_bad_emails_are_refused(site, email, capsys):
    before = site.read_bytes()
    assert cli("users", "add", "bob", "--email", email, "-f", str(site)) == 2
    assert "users[+].email" in capsys.readouterr().err
    assert site.read_bytes() == before


@pytest.mark.parametrize("name", ["akadmin", "admin", "root", "postgres", "default", "ak-outpost-0f1e2d3c",
                                  "authentik-x", "aicommons"])
def test_reserved_names_are_refused_before_anything_changes(site, name, capsys):
    before = site.read_bytes()
    assert cli("users", "add", name, "-f", str(site)) == 2
    err = capsys.readouterr().err
    assert "users[+].name" in err and "reserved" in err and "Traceback" not in err
    assert site.read_bytes() == before
    assert not (site.parent / ".aicommons").exists()  # refused before the state was even opened


@pytest.mark.parametrize("email", ["$(id)@x.io", "a<script>@x.io", "a" * 5000 + "@x.io", "`id`@x.io",
                                   "a@x.io\nb@y.io", "a..b@x.io", "a@x", "a@-x.io", "ä@x.io", "a@b@x.io"])
def test_hostile_emails_are_refused_before_anything_changes(site, email, capsys):
    before = site.read_bytes()
    assert cli("users", "add", "bob", "--email", email, "-f", str(site)) == 2
    err = capsys.readouterr().err
    assert "users[+].email" in err and "Traceback" not in err
    assert len(err) < 2000  # a 5,000-character address is not echoed back whole
    assert site.read_bytes() == before


def test_an_email_already_in_use_is_refused(site, tmp_path, capsys):
    before = site.read_bytes()
    assert cli("users", "add", "bob", "--email", "Alice@Example.org", "-f", str(site)) == 2
    err = capsys.readouterr().err
    assert "users[1].email" in err and "already alice's" in err
    assert site.read_bytes() == before
    with manage.Context(site) as ctx:
        assert "bob" not in {a.user for a in ctx.session.state.allocations()}


def test_removal_cannot_be_blocked_by_a_tenant_and_a_blocked_one_changes_nothing(site, tmp_path, pg, redis_server):
    """Issue 14: a large object in `postgres` and a grant on another user's database used to make
    `users remove` fail half-way (Redis data gone, user out of site.yaml, role and container kept)."""
    for n in ("alice", "bob"):
        assert add(site, n, tmp_path).ok
    with manage.Context(site) as ctx:
        sec = {n: ctx.tenant_secrets(ctx.tenant(n)) for n in ("alice", "bob")}
    r_bob = redislib.Redis(port=redis_server.port, username="u_bob", password=sec["bob"]["redis_password"])
    r_bob.set("t:bob:session", "kept")
    dsn = f"host={pg.host} port={pg.port} user=u_bob password={sec['bob']['postgres_password']}"
    # 1) something the removal cannot clear by itself: refused before anything changes
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute("CREATE DATABASE closed_db")
    with psycopg.connect(pg.admin_dsn.replace("dbname=postgres", "dbname=closed_db"), autocommit=True) as c:
        oid = c.execute("SELECT lo_from_bytea(0, 'x')").fetchone()[0]
        c.execute(f"ALTER LARGE OBJECT {oid} OWNER TO u_bob")
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute("ALTER DATABASE closed_db ALLOW_CONNECTIONS false")
    try:
        with pytest.raises(manage.AicError, match="bob was not removed.*closed_db"):
            manage.remove_user(site, "bob", driver=FakeDriver(tmp_path / "fake"))
        assert "bob" in manage.user_names(site) and r_bob.get("t:bob:session") == b"kept"
        with manage.Context(site) as ctx:
            t = ctx.tenant("bob")
            assert all(b.verify(t, ctx.tenant_secrets(t)) == [] for b in ctx.backends)
    finally:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
            c.execute("DROP DATABASE closed_db")
    # 2) what a tenant can plant: a large object in `postgres` (before this fix PUBLIC could connect)
    #    and grants between users' databases, both ways
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute("GRANT CONNECT ON DATABASE postgres TO PUBLIC")
    with psycopg.connect(dsn + " dbname=postgres", autocommit=True) as c:
        c.execute("SELECT lo_from_bytea(0, 'planted')")
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
    alice = f"host={pg.host} port={pg.port} user=u_alice password={sec['alice']['postgres_password']}"
    with psycopg.connect(alice + " dbname=n8n_alice", autocommit=True) as c:
        c.execute("GRANT CONNECT ON DATABASE n8n_alice TO u_bob")
    with psycopg.connect(dsn + " dbname=n8n_bob", autocommit=True) as c:
        c.execute("GRANT CONNECT ON DATABASE n8n_bob TO u_alice")
    res = manage.remove_user(site, "bob", driver=FakeDriver(tmp_path / "fake"))
    assert res.ok, [o.detail for o in res.errors]
    assert "tenant.postgres.bob" in res.plan.steps["tenant.redis.bob"].deps  # PostgreSQL first
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        assert c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'u_bob'").fetchone() is None
        c.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE lomowner = 'postgres'::regrole")
    with manage.Context(site) as ctx:
        t = ctx.tenant("alice")
        assert all(b.verify(t, ctx.tenant_secrets(t)) == [] for b in ctx.backends)
    assert manage.remove_user(site, "alice", driver=FakeDriver(tmp_path / "fake")).ok
