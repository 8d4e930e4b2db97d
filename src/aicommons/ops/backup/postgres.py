"""PostgreSQL: `pg_dump -Fc` per database (consistent with the row counts taken in the same
snapshot), `pg_dumpall --globals-only`, restore, and verify by restoring into a scratch database.
Passwords go through PGPASSWORD, never argv."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from aicommons.ops.backup.repo import BackupError

PG_BIN = Path(os.environ.get("AICOMMONS_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str = field(repr=False)


def tool(name: str) -> str:
    p = PG_BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} not found in {PG_BIN} or PATH: install postgresql-client-15")
    return found


def tool_version(name: str) -> str:
    try:
        return subprocess.run([tool(name), "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, BackupError, subprocess.SubprocessError):
        return "missing"


def _run(argv: list[str], srv: Server, what: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PGPASSWORD": srv.password, "PGCONNECT_TIMEOUT": "10"}
    res = subprocess.run(argv, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        raise BackupError(f"{what} failed: {lines[-1] if lines else 'exit ' + str(res.returncode)}")
    return res


def _conn_args(srv: Server) -> list[str]:
    return ["-h", srv.host, "-p", str(srv.port), "-U", srv.user]


def connect(srv: Server, db: str = "postgres", **kw) -> psycopg.Connection:
    try:
        return psycopg.connect(host=srv.host, port=srv.port, user=srv.user, password=srv.password,
                               dbname=db, connect_timeout=10, **kw)
    except psycopg.OperationalError as exc:
        raise BackupError(f"PostgreSQL {srv.host}:{srv.port} database {db}: {str(exc).strip()}") from None


BUILTIN = ("postgres", "template0", "template1")  # made by initdb; the globals dump covers what matters


def list_databases(srv: Server) -> list[str]:
    """Every database but initdb's own, whatever its flags: an owner can mark its database a
    template or closed, and a backup that listed only connectable non-templates skipped it
    silently (issue 23)."""
    with connect(srv) as c:
        rows = c.execute("SELECT datname FROM pg_database WHERE datname <> ALL(%s) ORDER BY datname",
                         (list(BUILTIN),)).fetchall()
    return [r[0] for r in rows]


def reopen_closed(srv: Server, dbs: list[str], tenant_dbs: set[str]) -> list[str]:
    """Make the closed databases among `dbs` dumpable. A tenant database is reopened (a tenant may
    not close it; `apply` would undo it too) and returned; any other is the operator's: refused."""
    with connect(srv, autocommit=True) as c:
        closed = [n for (n,) in c.execute("SELECT datname FROM pg_database WHERE NOT datallowconn "
                                          "AND datname = ANY(%s)", (dbs,))]
        foreign = [n for n in closed if n not in tenant_dbs]
        if foreign:
            raise BackupError(f"database(s) {', '.join(foreign)} accept no connections, so pg_dump cannot read "
                              "them; run ALTER DATABASE … ALLOW_CONNECTIONS true (or drop them) and back up again")
        for n in closed:
            c.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(n)))
    return closed


def _scalar(cur: psycopg.Cursor) -> Any:
    """The first column of the one row the query always returns (count(*), pg_export_snapshot())."""
    row = cur.fetchone()
    if row is None:
        raise BackupError("PostgreSQL returned no row for a query that always returns one")
    return row[0]


def table_counts(c: psycopg.Connection) -> dict[str, int]:
    tables = c.execute(
        "SELECT n.nspname, r.relname FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace "
        "WHERE r.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2").fetchall()
    return {f"{s}.{t}": _scalar(c.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(s), sql.Identifier(t)))) for s, t in tables}


def dump_database(srv: Server, db: str, out: Path) -> dict[str, int]:
    """Dump `db` and return its row counts, both from one exported snapshot."""
    with connect(srv, db) as c:
        c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        c.read_only = True
        snapshot = _scalar(c.execute("SELECT pg_export_snapshot()"))
        rows = table_counts(c)
        _run([tool("pg_dump"), "-Fc", f"--snapshot={snapshot}", "-f", str(out), *_conn_args(srv), "-d", db],
             srv, f"pg_dump of {db}")
    os.chmod(out, 0o600)
    return rows


def dump_globals(srv: Server, out: Path) -> None:
    _run([tool("pg_dumpall"), "--globals-only", "-f", str(out), *_conn_args(srv), "-l", "postgres"],
         srv, "pg_dumpall --globals-only")
    os.chmod(out, 0o600)


def check_archive(srv: Server, path: Path) -> None:
    """pg_restore can read the archive's table of contents (cheap, before anything is dropped)."""
    _run([tool("pg_restore"), "--list", str(path)], srv, f"reading {path.name}")


def verify_dump(srv: Server, path: Path, rows: dict[str, int]) -> list[str]:
    """Restore into a scratch database and compare row counts; the scratch database is dropped."""
    scratch = f"aic_verify_{secrets.token_hex(4)}"
    with connect(srv, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        _run([tool("pg_restore"), "--no-owner", "--no-acl", "--exit-on-error", "-d", scratch,
              *_conn_args(srv), str(path)], srv, f"restoring {path.name} into a scratch database")
        with connect(srv, scratch) as c:
            got = table_counts(c)
    except BackupError as exc:
        return [str(exc)]
    finally:
        with connect(srv, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))
    return [f"{path.name}: table {t} has {got.get(t)} rows, the backup recorded {n}"
            for t, n in rows.items() if got.get(t) != n] + \
           [f"{path.name}: table {t} is not in the manifest" for t in got if t not in rows]


def restore_database(srv: Server, db: str, path: Path) -> None:
    """Replace `db` with the archive (owner, privileges and settings included)."""
    check_archive(srv, path)
    with connect(srv, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    _run([tool("pg_restore"), "--create", "--exit-on-error", "-d", "postgres", *_conn_args(srv), str(path)],
         srv, f"pg_restore of {db}")


_ROLE_STMT = re.compile(r'^(CREATE|ALTER) ROLE ("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)[ ;]')


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def restore_roles(srv: Server, globals_sql: Path, only: set[str] | None = None) -> list[str]:
    """Re-create missing roles and reset their attributes/passwords from the globals dump.

    The admin role we are connected as is left alone (restoring it could lock us out).
    Returns the roles touched."""
    touched: list[str] = []
    with connect(srv, autocommit=True) as c:
        existing = {r[0] for r in c.execute("SELECT rolname FROM pg_roles")}
        for line in globals_sql.read_text().splitlines():
            m = _ROLE_STMT.match(line)
            if not m:
                continue
            verb, role = m.group(1), _unquote(m.group(2))
            if role == srv.user or (only is not None and role not in only):
                continue
            if verb == "CREATE" and role in existing:
                continue
            c.execute(line.encode())  # pg_dumpall's own statement, quoted by pg_dumpall
            if role not in touched:
                touched.append(role)
    return touched
