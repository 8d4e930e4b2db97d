"""Backups that restore, against REAL PostgreSQL 15 and Redis 7 (tests/servers.py binaries, started
for this module so that whole-site restores, which drop databases, cannot disturb other tests).
Real pg_dump/pg_restore/pg_dumpall, redis-cli --rdb and redis-check-rdb; tenants are created by
the real tenancy back ends (aicommons.tenancy.postgres/redis). Nothing is simulated here."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from aicommons.ops.backup.postgres import Server
from aicommons.ops.backup.repo import PARTIAL, Repo
from aicommons.ops.backup.run import Sources, restore_backup, run_backup, verify_backup
from aicommons.plan.resolve import resolve
from aicommons.spec.default import render_site_yaml
from aicommons.spec.load import load_text
from aicommons.tenancy.postgres import PostgresBackend
from aicommons.tenancy.redis import RedisBackend
from tests.servers import start_postgres, start_redis

T0 = dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC)
USERS = ("bk1", "bk2", "bk3")
# One shared Redis here; a user's own server (isolation=instance) is backed up and restored in
# tests/test_redis_service.py::test_a_users_own_server_is_backed_up_and_restored.
ISOLATION = "acl"


@pytest.fixture(scope="module")
def servers():
    pg, rd = start_postgres(), start_redis()
    yield pg, rd
    pg.cleanup()
    rd.cleanup()


def site_text() -> str:
    text = render_site_yaml(users=3, services=["ollama", "qdrant", "postgres", "redis", "garage"],
                            redis_isolation=ISOLATION)
    for i, u in enumerate(USERS, 1):
        text = text.replace(f"user{i}", u)
    return text


@pytest.fixture(scope="module")
def resolved():
    site, _ = load_text(site_text())
    return resolve(site)


@pytest.fixture(scope="module")
def src(servers):
    pg, rd = servers
    return Sources(postgres=Server("127.0.0.1", pg.port, pg.user, pg.password),
                   redis=Server("127.0.0.1", rd.port, rd.admin_user, rd.admin_password))


def _secrets(user: str) -> dict[str, str]:
    return {"postgres_password": f"pg-{user}-pw", "redis_password": f"redis-{user}-pw"}


@pytest.fixture(scope="module")
def tenants(servers, resolved, tmp_path_factory):
    pg, rd = servers
    arch = tmp_path_factory.mktemp("archive")
    pgb = PostgresBackend("127.0.0.1", pg.port, pg.user, pg.password, arch)
    rb = RedisBackend("127.0.0.1", rd.port, rd.admin_user, rd.admin_password, arch)
    for t in resolved.tenants:
        pgb.ensure(t, _secrets(t.user))
        rb.ensure(t, _secrets(t.user))
    return resolved.tenants


def write_data(src: Sources, resolved, generation: int) -> None:
    """Distinct rows and keys per user and generation (TTLs on some keys)."""
    import redis

    r = redis.Redis(host=src.redis.host, port=src.redis.port, username=src.redis.user, password=src.redis.password)
    for n, t in enumerate(resolved.tenants):
        for db in t.databases:
            with psycopg.connect(host=src.postgres.host, port=src.postgres.port, user=src.postgres.user,
                                 password=src.postgres.password, dbname=db) as c:
                c.execute("CREATE TABLE IF NOT EXISTS chats (id serial PRIMARY KEY, body text, score float)")
                c.execute("CREATE TABLE IF NOT EXISTS settings (k text PRIMARY KEY, v jsonb)")
                c.execute("TRUNCATE chats, settings")
                c.execute("INSERT INTO chats (body, score) SELECT %s || g, g * 0.5 FROM generate_series(1, %s) g",
                          (f"{db}-gen{generation}-", 50 + 10 * n + generation))
                c.execute("INSERT INTO settings VALUES ('theme', %s)", (f'{{"g": {generation}}}',))
        p = t.redis_prefix
        for k in r.scan_iter(match=p + "*"):
            r.delete(k)
        r.set(p + "greeting", f"hello {t.user} {generation}")
        r.hset(p + "profile", mapping={"gen": generation, "name": t.user})
        r.rpush(p + "history", *[f"q{i}" for i in range(5 + n + generation)])
        r.set(p + "session", "tmp", ex=3600)
    r.set("langfuse:queue", f"site-{generation}")  # a shared service's key, outside every tenant
    r.close()


def fingerprint(src: Sources, t) -> dict:
    """Row counts and a checksum of every row of every table, and every key's value and TTL flag."""
    import redis

    out: dict = {}
    for db in t.databases:
        with psycopg.connect(host=src.postgres.host, port=src.postgres.port, user=src.postgres.user,
                             password=src.postgres.password, dbname=db) as c:
            for table in ("chats", "settings"):
                n, digest = c.execute(sql.SQL("SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) "
                                              "FROM {} x").format(sql.Identifier(table))).fetchone()
                out[f"{db}.{table}"] = (n, digest)
    r = redis.Redis(host=src.redis.host, port=src.redis.port, username=src.redis.user, password=src.redis.password)
    for k in sorted(r.scan_iter(match=t.redis_prefix + "*")):
        out[k] = (hashlib.sha256(r.dump(k)).hexdigest(), r.pttl(k) > 0)
    acl = r.execute_command("ACL", "GETUSER", t.redis_user)
    out["acl"] = acl is not None
    r.close()
    return out


def destroy(src: Sources, resolved) -> None:
    import redis

    with psycopg.connect(host=src.postgres.host, port=src.postgres.port, user=src.postgres.user,
                         password=src.postgres.password, dbname="postgres", autocommit=True) as c:
        for t in resolved.tenants:
            for db in t.databases:
                c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
    r = redis.Redis(host=src.redis.host, port=src.redis.port, username=src.redis.user, password=src.redis.password)
    r.flushall()
    r.execute_command("ACL", "DELUSER", resolved.tenants[1].redis_user)
    r.close()


@pytest.fixture(scope="module")
def first_backup(src, resolved, tenants, tmp_path_factory):
    write_data(src, resolved, 0)
    before = {t.user: fingerprint(src, t) for t in tenants}
    repo = Repo(tmp_path_factory.mktemp("backups"))
    m = run_backup(resolved, src, repo, now=T0)
    return repo, m, before


def test_backup_has_manifest_and_private_files(first_backup, resolved):
    repo, m, _ = first_backup
    kinds = {i.kind for i in m.items}
    assert {"postgres_db", "postgres_globals", "redis_rdb", "redis_acl", "redis_keys"} <= kinds
    dbs = {i.name: i for i in m.items if i.kind == "postgres_db"}
    assert {db for t in resolved.tenants for db in t.databases} <= set(dbs)
    assert dbs["openwebui_bk1"].user == "bk1" and dbs["openwebui_bk1"].detail["rows"]["public.chats"] == 50
    keys = {i.name: i.detail["keys"] for i in m.items if i.kind == "redis_keys"}
    assert keys["bk1"] == 4 and keys["_site"] >= 1
    assert m.site == resolved.site.name and m.tools["pg_dump"].startswith("pg_dump")
    _, root = repo.get(m.id)
    for p in root.rglob("*"):
        if p.is_file():
            assert p.stat().st_mode & 0o077 == 0, p
    assert all(len(i.sha256) == 64 for i in m.items if i.path)


def test_destroy_then_restore_everything_is_identical(first_backup, src, resolved):
    repo, m, before = first_backup
    destroy(src, resolved)
    import redis

    r = redis.Redis(host=src.redis.host, port=src.redis.port, username=src.redis.user, password=src.redis.password)
    assert r.execute_command("ACL", "GETUSER", "u_bk2") is None and r.dbsize() == 0
    r.close()
    done = restore_backup(resolved, repo, m.id, src)
    assert "database openwebui_bk2" in done and "redis user u_bk2" in done
    after = {t.user: fingerprint(src, t) for t in resolved.tenants}
    assert after == before
    r = redis.Redis(host=src.redis.host, port=src.redis.port, username=src.redis.user, password=src.redis.password)
    assert r.get("langfuse:queue") == b"site-0"  # shared services' keys come back too
    r.close()


def test_restore_one_user_leaves_the_others_alone(first_backup, src, resolved):
    repo, m, before = first_backup
    write_data(src, resolved, 1)  # everyone moves on
    moved = {t.user: fingerprint(src, t) for t in resolved.tenants}
    assert moved["bk2"] != before["bk2"]
    restore_backup(resolved, repo, m.id, src, user="bk2")
    after = {t.user: fingerprint(src, t) for t in resolved.tenants}
    assert after["bk2"] == before["bk2"]
    assert after["bk1"] == moved["bk1"] and after["bk3"] == moved["bk3"]


def test_user_backup_and_restore(src, resolved, tenants, tmp_path):
    repo = Repo(tmp_path)
    write_data(src, resolved, 2)
    before = {t.user: fingerprint(src, t) for t in tenants}
    m = run_backup(resolved, src, repo, user="bk3", now=T0)
    assert {i.user for i in m.items if i.kind != "skipped"} == {"bk3"}
    write_data(src, resolved, 3)
    moved = {t.user: fingerprint(src, t) for t in tenants}
    restore_backup(resolved, repo, m.id, src)  # a user backup restores only its user
    after = {t.user: fingerprint(src, t) for t in tenants}
    assert after["bk3"] == before["bk3"] and after["bk1"] == moved["bk1"]


def test_verify_passes_on_a_good_backup(first_backup, src):
    repo, m, _ = first_backup
    assert verify_backup(repo, m.id, src) == []


def _copy(repo: Repo, m, new_id: str) -> Path:
    _, root = repo.get(m.id)
    dest = repo.root / new_id
    shutil.copytree(root, dest)
    text = (dest / "manifest.json").read_text().replace(m.id, new_id)
    (dest / "manifest.json").write_text(text)
    return dest


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_catches_a_corrupted_archive(first_backup, src):
    repo, m, _ = first_backup
    dest = _copy(repo, m, "corrupt-1")
    _flip(dest / "postgres/openwebui_bk1.dump", 0.6)
    problems = verify_backup(repo, "corrupt-1", src)
    assert any("openwebui_bk1.dump: sha256 differs" in p for p in problems)
    with pytest.raises(Exception, match="damaged, nothing was restored"):
        restore_backup(None, repo, "corrupt-1", src)  # refused before touching anything


def test_verify_restores_not_only_checksums(first_backup, src):
    """A damaged dump whose manifest was rewritten to match is still caught: by restoring it."""
    import json

    from aicommons.ops.backup.repo import sha256_file

    repo, m, _ = first_backup
    dest = _copy(repo, m, "corrupt-2")
    dump = dest / "postgres/n8n_bk2.dump"
    _flip(dump, 0.7)
    man = json.loads((dest / "manifest.json").read_text())
    for it in man["items"]:
        if it["path"] == "postgres/n8n_bk2.dump":
            it["sha256"] = sha256_file(dump)
    (dest / "manifest.json").write_text(json.dumps(man))
    problems = verify_backup(repo, "corrupt-2", src)
    assert problems and all("sha256" not in p for p in problems)
    assert any("n8n_bk2.dump" in p for p in problems)


def test_interrupted_backup_never_replaces_the_last_good_one(first_backup, src, resolved):
    repo, m, _ = first_backup
    good = [x.id for x in repo.list()]

    def boom(what: str) -> None:
        if what.startswith("redis"):
            raise RuntimeError("disk full (simulated mid-run failure)")

    with pytest.raises(RuntimeError):
        run_backup(resolved, src, repo, now=T0 + dt.timedelta(days=1), step=boom)
    assert [x.id for x in repo.list()] == good
    assert not list(repo.root.glob(PARTIAL + "*"))


def test_killed_backup_never_replaces_the_last_good_one(first_backup, src, resolved):
    repo, m, _ = first_backup
    good = [x.id for x in repo.list()]
    script = textwrap.dedent(f"""
        import datetime as dt, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from aicommons.ops.backup.postgres import Server
        from aicommons.ops.backup.repo import Repo
        from aicommons.ops.backup.run import Sources, run_backup
        from aicommons.plan.resolve import resolve
        from aicommons.spec.load import load_text
        site, _ = load_text(open(sys.argv[1]).read())
        src = Sources(postgres=Server("127.0.0.1", {src.postgres.port}, "postgres", sys.argv[2]))
        seen = []
        def step(what):
            seen.append(what)
            if len(seen) == 3:
                print("MIDWAY", flush=True)
                time.sleep(600)
        run_backup(resolve(site), src, Repo(sys.argv[3]), now=dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc), step=step)
    """)
    site_file = repo.root.parent / "site-kill.yaml"
    site_file.write_text(site_text())
    proc = subprocess.Popen([sys.executable, "-c", script, str(site_file), src.postgres.password, str(repo.root)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "MIDWAY"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert list(repo.root.glob(PARTIAL + "*")), "the killed run left its partial directory"
    assert [x.id for x in repo.list()] == good  # listed backups unchanged; the partial is not one
    assert repo.clean_partials() and not list(repo.root.glob(PARTIAL + "*"))
