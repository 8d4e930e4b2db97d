"""Model-gateway tenancy: each person's key, stored hashed in the gateway's database.

The database (`gateway.database`, on the site's PostgreSQL) holds keys, per-person budget
overrides, the live window counters and usage; `SCHEMA` is created here (by `ensure`) and by the
gateway at start, whichever comes first. `suspend` revokes the key at once (the gateway reads the
key row on every request); `remove` deletes it and keeps the person's usage unless purging.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

from aicommons.errors import TemporaryError
from aicommons.plan.model import Tenant
from aicommons.plan.policy import gateway_key, gateway_key_hash
from aicommons.tenancy.base import AuditCheck, Secrets

# Usage rows are per person x model x app x hour: a chart over time without a row per request.
# One implicit transaction (a simple query); the advisory lock serialises parallel first runs,
# whose CREATE TABLE IF NOT EXISTS would otherwise collide on the catalog's unique indexes.
SCHEMA = """
SELECT pg_advisory_xact_lock(7237001);
CREATE TABLE IF NOT EXISTS gw_keys (
    username   text PRIMARY KEY,
    key_hash   bytea NOT NULL,
    active     boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS gw_limits (
    username   text PRIMARY KEY,
    period     text NOT NULL CHECK (period IN ('day', 'week', 'month')),
    tokens     bigint CHECK (tokens >= 0),
    cost       numeric CHECK (cost >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS gw_windows (
    username        text NOT NULL,
    period          text NOT NULL,
    window_start    timestamptz NOT NULL,
    tokens_used     bigint NOT NULL DEFAULT 0,
    tokens_reserved bigint NOT NULL DEFAULT 0,
    cost_used       numeric NOT NULL DEFAULT 0,
    cost_reserved   numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (username, period, window_start)
);
CREATE TABLE IF NOT EXISTS gw_usage (
    username          text NOT NULL,
    model             text NOT NULL,
    app               text NOT NULL,
    hour              timestamptz NOT NULL,
    requests          bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cost              numeric NOT NULL DEFAULT 0,
    unmetered         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (username, model, app, hour)
);
"""


def create_database(host: str, port: int, user: str, password: str, dbname: str) -> None:
    """The gateway's database and tables, if missing (idempotent)."""
    try:
        with psycopg.connect(host=host, port=port, user=user, password=password, dbname="postgres",
                             autocommit=True, connect_timeout=5) as c:
            if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
                try:
                    c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                    pass  # made by a parallel ensure (two users' steps run at once)
                c.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(dbname)))
        with psycopg.connect(host=host, port=port, user=user, password=password, dbname=dbname,
                             autocommit=True, connect_timeout=5) as c:
            # Tables belong to the database's owner (the gateway's own role where the site's
            # PostgreSQL made it, render/gatewaydb.py), so the gateway, which logs in as that role, can use them.
            (owner,) = c.execute("SELECT pg_get_userbyid(datdba) FROM pg_database "
                                 "WHERE datname = current_database()").fetchone() or (user,)
            if owner != user:
                c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
            c.execute(SCHEMA)
    except psycopg.OperationalError as exc:
        raise TemporaryError(f"PostgreSQL at {host}:{port} (gateway database {dbname}) is not reachable: {exc}",
                             delay=2.0) from None


@dataclass
class GatewayBackend:
    host: str
    port: int
    admin_user: str
    admin_password: str
    dbname: str = "aicommons_gateway"
    name: str = "gateway"

    def _connect(self):
        create_database(self.host, self.port, self.admin_user, self.admin_password, self.dbname)
        return psycopg.connect(host=self.host, port=self.port, user=self.admin_user, password=self.admin_password,
                               dbname=self.dbname, autocommit=True, connect_timeout=5)

    def observe(self) -> dict[str, set[str]]:
        with self._connect() as c:
            return {u: {f"gateway.key.{u}"} for (u,) in c.execute("SELECT username FROM gw_keys")}

    def ensure(self, t: Tenant, secrets: Secrets) -> None:
        h = gateway_key_hash(gateway_key(t.user, secrets["gateway_key"]))
        with self._connect() as c:
            # A rotated secret replaces the hash; `active` is left alone (a suspended person stays suspended).
            c.execute("INSERT INTO gw_keys (username, key_hash) VALUES (%s, %s) ON CONFLICT (username) DO UPDATE "
                      "SET key_hash = EXCLUDED.key_hash, updated_at = now() WHERE gw_keys.key_hash <> EXCLUDED.key_hash",
                      (t.user, h))

    def verify(self, t: Tenant, secrets: Secrets) -> list[str]:
        with self._connect() as c:
            row = c.execute("SELECT key_hash FROM gw_keys WHERE username = %s", (t.user,)).fetchone()
        if row is None:
            return [f"gateway key of {t.user} is missing"]
        if bytes(row[0]) != gateway_key_hash(gateway_key(t.user, secrets["gateway_key"])):
            return [f"gateway key of {t.user} does not match the site's secret"]
        return []

    def remove(self, t: Tenant, *, purge: bool = False) -> None:
        with self._connect() as c, c.transaction():
            c.execute("DELETE FROM gw_keys WHERE username = %s", (t.user,))
            if purge:
                for table in ("gw_limits", "gw_windows", "gw_usage"):
                    c.execute(sql.SQL("DELETE FROM {} WHERE username = %s").format(sql.Identifier(table)), (t.user,))

    def suspend(self, t: Tenant) -> None:
        with self._connect() as c:
            c.execute("UPDATE gw_keys SET active = false, updated_at = now() WHERE username = %s", (t.user,))

    def resume(self, t: Tenant, secrets: Secrets) -> None:
        self.ensure(t, secrets)
        with self._connect() as c:
            c.execute("UPDATE gw_keys SET active = true, updated_at = now() WHERE username = %s", (t.user,))

    def is_suspended(self, t: Tenant) -> bool:
        with self._connect() as c:
            row = c.execute("SELECT active FROM gw_keys WHERE username = %s", (t.user,)).fetchone()
        return row is not None and not row[0]

    def audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        """Each key opens its own account and no other one (keys name their user; the hash decides)."""
        with self._connect() as c:
            stored = {u: bytes(h) for u, h in c.execute("SELECT username, key_hash FROM gw_keys")}
        out = []
        for a in tenants:
            if "gateway_key" not in secrets.get(a.user, {}):
                continue
            for b in tenants:
                forged = gateway_key(b.user, secrets[a.user]["gateway_key"])  # a's token under b's name
                ok = stored.get(b.user) == gateway_key_hash(forged)
                out.append(AuditCheck(self.name, a.user, b.user, f"gateway key of {b.user}",
                                      "allow" if a.user == b.user else "deny", "allow" if ok else "deny"))
        return out
