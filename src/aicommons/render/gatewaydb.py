"""The model gateway's own login to the site's PostgreSQL (pure): a least-privilege role.

The gateway logs in as the role `gateway` (render/common.py db_ident), which owns the gateway's
database (`gateway.database`) and nothing else: no superuser, no CREATEDB/CREATEROLE, and
pg_hba admits it only to that database from the gateway's container. The site's PostgreSQL
makes it (`gateway_sql`, run by the superuser like lemonldap.sql); the control plane's key
management (tenancy/gateway.py) writes the tables as that role, so every table is the role's.
"""

from __future__ import annotations

import hashlib

from psycopg.conninfo import make_conninfo

from aicommons.plan.model import ResolvedSite
from aicommons.plan.policy import scram_verifier
from aicommons.render.common import db_ident, endpoint_host, port_of

ROLE = db_ident("gateway")
PASSWORD_KEY = "gateway_db_password"  # site secret (plan/secrets.py SITE_KEYS)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def gateway_sql(password: str, dbname: str) -> str:
    """Run by the superuser in the PostgreSQL container (idempotent): the role, its database
    owned by it, and the tables an earlier admin-run left to the superuser handed over. The
    password reaches the server only as a SCRAM verifier (salt derived from it: a stable file)."""
    salt = hashlib.sha256(b"aicommons-gateway|" + password.encode()).digest()[:16]
    verifier = _literal(scram_verifier(password, salt))
    tables = ("gw_keys", "gw_limits", "gw_windows", "gw_usage")  # tenancy/gateway.py SCHEMA
    return "\n".join([
        "-- Rendered by aicommons: do not edit by hand.",
        r"\set ON_ERROR_STOP on",
        f"SELECT 'CREATE ROLE {ROLE} LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') \\gexec",
        f"ALTER ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION CONNECTION LIMIT 40 "
        f"PASSWORD {verifier};",
        f"SELECT 'CREATE DATABASE {dbname} OWNER {ROLE}' WHERE NOT EXISTS "
        f"(SELECT 1 FROM pg_database WHERE datname = '{dbname}') \\gexec",
        f"ALTER DATABASE {dbname} OWNER TO {ROLE};",
        f"REVOKE ALL ON DATABASE {dbname} FROM PUBLIC;",
        f"\\connect {dbname}",
        *[f"ALTER TABLE IF EXISTS {t} OWNER TO {ROLE};" for t in tables],
    ]) + "\n"


def conninfo(resolved: ResolvedSite, password: str) -> str:
    """The gateway's libpq connection string (AICOMMONS_GATEWAY_DATABASE in its env file)."""
    host = endpoint_host(resolved, "postgres")
    if host is None:
        raise ValueError("the gateway keeps keys and usage in the site's PostgreSQL: enable services.postgres")
    return make_conninfo(host=host, port=port_of(resolved, "postgres") or 5432, user=ROLE, password=password,
                         dbname=resolved.site.gateway.database, connect_timeout=5)
