"""Onboard 50 users into a real PostgreSQL 15 and Redis 7, against the floor of the same statements
piped straight through `psql` and `redis-cli`; then the control-plane time of one `users add` on a
50-user site (engine + state + render, with the back ends' own time subtracted).

Run: .venv/bin/python benchmarks/provision.py   (starts its own servers on loopback; ~1 minute)
Goals: ratio <= 1.5x; one `users add` < 0.3 s of control-plane time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

import psycopg  # noqa: E402

from aicommons.plan.policy import acl_rules  # noqa: E402
from aicommons.tenancy.postgres import PostgresBackend, database_statements, role_statements  # noqa: E402
from aicommons.tenancy.redis import RedisBackend  # noqa: E402
from tests.servers import PG_BIN, start_postgres, start_redis  # noqa: E402
from tests.standins.helpers import DictSecrets, resolved_site  # noqa: E402

N = 50


def drop_all(pg, rb, tenants) -> None:
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        for t in tenants:
            for db in t.databases:
                c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute(f'DROP ROLE IF EXISTS "{t.postgres_role}"')
    for t in tenants:
        rb.remove(t, purge=True)


def floor(pg, rs, tenants, secrets) -> float:
    """The same statements, written out as text, through one psql and one redis-cli process."""
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        sql_text = "".join(
            s.as_string(c) + ";\n"
            for t in tenants
            for s in role_statements(t, secrets.for_tenant(t)["postgres_password"], 30)
            + [x for db in t.databases for x in database_statements(t, db)])
    redis_text = "".join(
        " ".join(["ACL", "SETUSER", t.redis_user, *acl_rules(t, secrets.for_tenant(t)["redis_password"])]) + "\nACL SAVE\n"
        for t in tenants)
    env = {**os.environ, "PGPASSWORD": pg.password, "REDISCLI_AUTH": rs.admin_password}
    psql = str(PG_BIN / "psql") if (PG_BIN / "psql").exists() else "psql"
    t0 = time.perf_counter()
    subprocess.run([psql, "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.host, "-p", str(pg.port), "-U", pg.user,
                    "-d", "postgres"], input=sql_text, text=True, env=env, check=True, capture_output=True)
    subprocess.run(["redis-cli", "--no-auth-warning", "-p", str(rs.port), "--user", rs.admin_user],
                   input=redis_text, text=True, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def ours(pgb, rb, tenants, secrets) -> float:
    t0 = time.perf_counter()
    for t in tenants:
        s = secrets.for_tenant(t)
        pgb.ensure(t, s)
        rb.ensure(t, s)
    return time.perf_counter() - t0


class Timed:
    """Wraps a back end and adds up the time its calls take (to subtract from `users add`)."""

    def __init__(self, inner, clock):
        self._inner, self._clock = inner, clock
        self.name = inner.name

    def __getattr__(self, attr):
        fn = getattr(self._inner, attr)

        def call(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self._clock[0] += time.perf_counter() - t0
        return call


def users_add(pg, rs, tmp: Path) -> tuple[float, float]:
    from aicommons.drivers.fake import FakeDriver
    from aicommons.engine.api import apply_site
    from aicommons.ops import users as manage

    os.environ["AIC_BENCH_PG"], os.environ["AIC_BENCH_REDIS"] = pg.password, rs.admin_password
    site = tmp / "site.yaml"
    users = "".join(f"  - {{name: user{i}, email: user{i}@example.org}}\n" for i in range(1, N))  # the add makes it 50
    site.write_text(f"""version: 1
name: bench
domain: example.org
driver: {{kind: lxc}}
services:
  ollama: {{}}
  postgres: {{external: {{host: 127.0.0.1, port: {pg.port}, admin_user: postgres, admin_password: "env:AIC_BENCH_PG"}}}}
  redis: {{external: {{host: 127.0.0.1, port: {rs.port}, admin_user: admin, admin_password: "env:AIC_BENCH_REDIS"}}}}
user_template:
  apps: [n8n, jupyter, code-server, big-agi, kotaemon, chainforge]
backups: {{dir: backups}}
users:
{users}""")
    driver = FakeDriver(tmp / "fake")
    assert apply_site(site, driver=driver, yes=True, out=open(os.devnull, "w")).ok
    with manage.Context(site) as ctx:
        clock = [0.0]
        backends = [Timed(b, clock) for b in ctx.backends]
    t0 = time.perf_counter()
    added, result = manage.add_user(site, f"user{N}", f"user{N}@example.org", driver=driver, backends=backends,
                                    out=open(os.devnull, "w"))
    total = time.perf_counter() - t0
    assert added and result.ok, result.errors
    return total, clock[0]


def main() -> int:
    pg, rs = start_postgres(), start_redis()
    tmp = Path(tempfile.mkdtemp(prefix="aic-bench-"))
    try:
        tenants = resolved_site(N).tenants
        secrets = DictSecrets()
        pgb = PostgresBackend(pg.host, pg.port, pg.user, pg.password, tmp / "archive")
        rb = RedisBackend(rs.host, rs.port, rs.admin_user, rs.admin_password, tmp / "archive")
        dbs = sum(len(t.databases) for t in tenants)
        f = floor(pg, rs, tenants, secrets)
        drop_all(pg, rb, tenants)
        o = ours(pgb, rb, tenants, secrets)
        again = ours(pgb, rb, tenants, secrets)  # converged: nothing to do
        drop_all(pg, rb, tenants)
        print(f"onboard {N} users ({dbs} databases, {N} roles, {N} ACL users)")
        print(f"  floor (psql + redis-cli): {f:7.2f} s")
        print(f"  aicommons ensure:         {o:7.2f} s   ratio {o / f:.2f}x  (goal <= 1.5x)")
        print(f"  second run (no changes):  {again:7.2f} s   ratio {again / f:.2f}x")
        total, backend = users_add(pg, rs, tmp)
        print(f"users add on a {N}-user site: {total:.3f} s total, {backend:.3f} s in the back ends, "
              f"control plane {total - backend:.3f} s  (goal < 0.3 s)")
    finally:
        pg.cleanup()
        rs.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
