"""`aicommons backup run|list|verify|restore|schedule` end to end through the CLI, against the REAL
session PostgreSQL and Redis (`pg`, `redis_server`) declared as `external:` servers on loopback.
Only per-user restores are run here, so other tests' data on those servers is never touched."""

from __future__ import annotations

import json

import psycopg
import pytest
import redis

from aicommons.cli import main
from aicommons.plan.resolve import resolve
from aicommons.spec.load import load_site
from aicommons.tenancy.postgres import PostgresBackend
from aicommons.tenancy.redis import RedisBackend

SITE = """\
version: 1
name: clitest
domain: example.org
driver: {{kind: lxc}}
services:
  ollama: {{external: {{host: 127.0.0.1, port: 1}}}}
  postgres: {{external: {{host: 127.0.0.1, port: {pg}, admin_user: postgres, admin_password: env:AIC_TEST_PG}}}}
  redis: {{external: {{host: 127.0.0.1, port: {rd}, admin_user: admin, admin_password: env:AIC_TEST_REDIS}}}}
user_template: {{apps: [n8n]}}
users: [{{name: cli1, email: cli1@example.org}}, {{name: cli2, email: cli2@example.org}}]
backups: {{dir: backups, daily: 2, weekly: 0}}
"""


@pytest.fixture
def site(tmp_path, pg, redis_server, monkeypatch):
    monkeypatch.setenv("AIC_TEST_PG", pg.password)
    monkeypatch.setenv("AIC_TEST_REDIS", redis_server.admin_password)
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(pg=pg.port, rd=redis_server.port))
    resolved = resolve(load_site(path)[0])
    pgb = PostgresBackend("127.0.0.1", pg.port, pg.user, pg.password, tmp_path / "arch")
    rb = RedisBackend("127.0.0.1", redis_server.port, redis_server.admin_user, redis_server.admin_password,
                      tmp_path / "arch")
    for t in resolved.tenants:
        secrets = {"postgres_password": f"p-{t.user}", "redis_password": f"r-{t.user}"}
        pgb.ensure(t, secrets)
        rb.ensure(t, secrets)
    yield path, resolved
    for t in resolved.tenants:
        pgb.remove(t, purge=True)
        rb.remove(t, purge=True)


def _write(pg, redis_server, value: str) -> None:
    for user in ("cli1", "cli2"):
        with psycopg.connect(pg.admin_dsn.replace("dbname=postgres", f"dbname=n8n_{user}")) as c:
            c.execute("CREATE TABLE IF NOT EXISTS wf (v text)")
            c.execute("DELETE FROM wf")
            c.execute("INSERT INTO wf VALUES (%s)", (f"{user}-{value}",))
        r = redis.Redis(port=redis_server.port, username=redis_server.admin_user, password=redis_server.admin_password)
        r.set(f"t:{user}:state", f"{user}-{value}")
        r.close()


def _read(pg, redis_server, user: str) -> tuple[str, str]:
    with psycopg.connect(pg.admin_dsn.replace("dbname=postgres", f"dbname=n8n_{user}")) as c:
        row = c.execute("SELECT v FROM wf").fetchone()[0]
    r = redis.Redis(port=redis_server.port, username=redis_server.admin_user, password=redis_server.admin_password)
    val = r.get(f"t:{user}:state").decode()
    r.close()
    return row, val


def test_cli_backup_cycle(site, pg, redis_server, capsys):
    path, _ = site
    _write(pg, redis_server, "v1")
    base = ["-f", str(path), "--only", "postgres,redis"]
    assert main(["backup", "run", "--user", "cli1", *base]) == 0
    assert main(["backup", "list", "-f", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out[out.index("["):])
    assert len(listed) == 1 and listed[0]["user"] == "cli1"
    bid = listed[0]["id"]
    assert main(["backup", "verify", bid, *base]) == 0
    _write(pg, redis_server, "v2")
    assert main(["backup", "restore", bid, "--user", "cli1", "--yes", *base]) == 0
    assert _read(pg, redis_server, "cli1") == ("cli1-v1", "cli1-v1")
    assert _read(pg, redis_server, "cli2") == ("cli2-v2", "cli2-v2")
    assert (path.parent / "backups" / bid / "manifest.json").exists()


def test_cli_errors_are_clean(site, capsys):
    path, _ = site
    assert main(["backup", "run", "-f", str(path), "--user", "nobody", "--only", "postgres"]) == 1
    assert "--user 'nobody' is not a user" in capsys.readouterr().err
    assert main(["backup", "verify", "nope", "-f", str(path), "--only", "postgres"]) == 1
    assert "no backup 'nope'" in capsys.readouterr().err
    assert main(["backup", "run", "-f", str(path), "--only", "mysql"]) == 1
    assert "unknown mysql" in capsys.readouterr().err


def test_cli_schedule_prints_units(site, capsys):
    path, _ = site
    assert main(["backup", "schedule", "-f", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OnCalendar=" in out and f"backup run -f {path.resolve()} --prune" in out
