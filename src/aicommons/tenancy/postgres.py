"""PostgreSQL tenancy: one LOGIN role per user, one database per app, owned by that role.

Every identifier goes through psycopg's `sql.Identifier`. Passwords reach the server only as
SCRAM-SHA-256 verifiers computed here, so the plain text never appears in a statement (or in a
server log with log_statement=all). Roles and databases carry a COMMENT naming the user, which is
how `observe` maps them back without re-deriving names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.model import Tenant
from aicommons.tenancy.base import AuditCheck, Secrets

COMMENT = "aicommons user {user}"
_COMMENT_RE = re.compile(r"^aicommons user ([a-z0-9-]+)$")
SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores in pg_authid (RFC 5802/7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def verifier_matches(verifier: str | None, password: str) -> bool:
    """Whether a stored verifier was made from `password` (recomputed with its own salt)."""
    m = re.match(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$", verifier or "")
    if not m:
        return False
    again = scram_verifier(password, base64.b64decode(m.group(2)), int(m.group(1)))
    return hmac.compare_digest(again, verifier)


def role_statements(t: Tenant, password: str, limit: int) -> list[sql.Composed]:
    """The statements that create a tenant from nothing (also what the benchmark pipes to psql)."""
    role = sql.Identifier(t.postgres_role)
    out = [sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                   "CONNECTION LIMIT {} PASSWORD {}").format(role, sql.Literal(limit),
                                                             sql.Literal(scram_verifier(password))),
           sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(COMMENT.format(user=t.user)))]
    return out


def database_statements(t: Tenant, db: str) -> list[sql.Composed]:
    ident, role = sql.Identifier(db), sql.Identifier(t.postgres_role)
    return [sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, role),
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident),
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(COMMENT.format(user=t.user)))]


def _grantees(acl: list[str] | None) -> set[str]:
    """Roles named in a datacl (PUBLIC as ''); None means the default ACL, which includes PUBLIC."""
    if acl is None:
        return {""}
    return {item.split("=", 1)[0].strip('"') for item in acl}


@dataclass
class PostgresBackend:
    host: str
    port: int
    admin_user: str
    admin_password: str
    archive_dir: Path
    connection_limit: int = 30
    workers: int = 2  # CREATE DATABASE copies template1 and syncs; two connections roughly halve it
    name: str = "postgres"

    # ---- connections ---------------------------------------------------------------------------

    def _connect(self, user: str | None = None, password: str | None = None, dbname: str = "postgres"):
        return psycopg.connect(host=self.host, port=self.port, user=user or self.admin_user,
                               password=password if user else self.admin_password, dbname=dbname,
                               autocommit=True, connect_timeout=5)

    def _admin(self):
        try:
            return self._connect()
        except psycopg.OperationalError as exc:
            raise TemporaryError(f"PostgreSQL at {self.host}:{self.port} is not reachable as "
                                 f"{self.admin_user}: {str(exc).strip()}", delay=2.0) from None

    # ---- reading -------------------------------------------------------------------------------

    def observe(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        with self._admin() as c:
            for kind, query in (
                ("role", "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles"),
                ("database", "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"),
            ):
                for name, comment in c.execute(query):
                    m = _COMMENT_RE.match(comment or "")
                    if m:
                        out.setdefault(m.group(1), set()).add(f"postgres.{kind}.{name}")
        return out

    def _role(self, c, t: Tenant):
        return c.execute("SELECT rolcanlogin, rolconnlimit, rolsuper OR rolcreaterole OR rolcreatedb "
                         "OR rolreplication OR rolbypassrls, rolpassword FROM pg_authid WHERE rolname = %s",
                         (t.postgres_role,)).fetchone()

    def _databases(self, c, t: Tenant) -> dict[str, tuple[str, list[str] | None]]:
        rows = c.execute("SELECT d.datname, r.rolname, d.datacl::text[] FROM pg_database d "
                         "JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = ANY(%s)", (list(t.databases),))
        return {name: (owner, acl) for name, owner, acl in rows}

    def verify(self, t: Tenant, secrets: Secrets) -> list[str]:
        problems = []
        with self._admin() as c:
            role = self._role(c, t)
            if role is None:
                return [f"role {t.postgres_role} is missing"]
            _login, limit, powers, verifier = role
            if powers:
                problems.append(f"role {t.postgres_role} has administrative attributes")
            if limit != self.connection_limit:
                problems.append(f"role {t.postgres_role} connection limit is {limit}, not {self.connection_limit}")
            if not verifier_matches(verifier, secrets["postgres_password"]):
                problems.append(f"role {t.postgres_role} password differs from the stored secret")
            dbs = self._databases(c, t)
            for db in t.databases:
                if db not in dbs:
                    problems.append(f"database {db} is missing")
                    continue
                owner, acl = dbs[db]
                if owner != t.postgres_role:
                    problems.append(f"database {db} is owned by {owner}, not {t.postgres_role}")
                extra = _grantees(acl) - {owner, self.admin_user}
                if extra:
                    who = ", ".join(sorted("PUBLIC" if g == "" else g for g in extra))
                    problems.append(f"database {db} grants privileges to {who}")
        return problems

    # ---- changing ------------------------------------------------------------------------------

    def ensure(self, t: Tenant, secrets: Secrets) -> None:
        password = secrets["postgres_password"]
        role = sql.Identifier(t.postgres_role)
        with self._admin() as c:
            row = self._role(c, t)
            if row is None:
                for stmt in role_statements(t, password, self.connection_limit):
                    c.execute(stmt)
            else:
                # An existing NOLOGIN role is a suspended user: only `resume` turns logins back on.
                login, limit, powers, verifier = row
                if limit != self.connection_limit or powers:
                    c.execute(sql.SQL("ALTER ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                      "NOBYPASSRLS CONNECTION LIMIT {}").format(role, sql.Literal(self.connection_limit)))
                if not verifier_matches(verifier, password):
                    c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(scram_verifier(password))))
            existing = self._databases(c, t)
            for db, (owner, acl) in existing.items():
                ident = sql.Identifier(db)
                if owner != t.postgres_role:
                    c.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident, role))
                for g in _grantees(acl) - {owner, t.postgres_role, self.admin_user}:
                    who = sql.SQL("PUBLIC") if g == "" else sql.Identifier(g)
                    c.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(ident, who))
        missing = [db for db in t.databases if db not in existing]
        self._create_databases(t, missing)

    def _create_databases(self, t: Tenant, dbs: list[str]) -> None:
        if not dbs:
            return

        def run(chunk: list[str]) -> None:
            with self._admin() as c:
                for db in chunk:
                    for stmt in database_statements(t, db):
                        try:
                            c.execute(stmt)
                        except psycopg.errors.DuplicateDatabase:
                            pass  # a concurrent or earlier half-finished run made it; the rest still runs

        n = max(1, min(self.workers, len(dbs)))
        chunks = [dbs[i::n] for i in range(n)]
        if n == 1:
            run(chunks[0])
            return
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(run, chunks))

    def remove(self, t: Tenant, *, purge: bool = False) -> None:
        with self._admin() as c:
            present = [db for db in t.databases if db in self._databases(c, t)]
        if not purge and present:
            self.archive(t, present)
        with self._admin() as c:
            for db in present:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(t.postgres_role)))

    def archive(self, t: Tenant, dbs: list[str]) -> list[Path]:
        """pg_dump -Fc each database into archive_dir/<user>/ before anything is dropped."""
        pg_dump = shutil.which("pg_dump") or "/usr/lib/postgresql/15/bin/pg_dump"
        out_dir = Path(self.archive_dir) / t.user
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        env = {**os.environ, "PGPASSWORD": self.admin_password}
        paths = []
        for db in dbs:
            path = out_dir / f"{db}-{stamp}.dump"
            res = subprocess.run([pg_dump, "-Fc", "-h", self.host, "-p", str(self.port), "-U", self.admin_user,
                                  "-d", db, "-f", str(path)], env=env, capture_output=True, text=True)
            if res.returncode != 0:
                raise PermanentError(f"archiving database {db} failed, nothing was dropped: "
                                     f"{res.stderr.strip()[:300]}; fix it or pass --purge to drop without archive")
            os.chmod(path, 0o600)
            paths.append(path)
        return paths

    def suspend(self, t: Tenant) -> None:
        with self._admin() as c:
            c.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(t.postgres_role)))
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                      (t.postgres_role,))

    def resume(self, t: Tenant, secrets: Secrets) -> None:
        with self._admin() as c:
            c.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(t.postgres_role)))
        self.ensure(t, secrets)

    def is_suspended(self, t: Tenant) -> bool:
        with self._admin() as c:
            row = self._role(c, t)
        return row is not None and not row[0]

    # ---- audit ---------------------------------------------------------------------------------

    def audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        """Each user connects with their own password to every database of the site."""
        probes = [(actor, target, db) for actor in tenants for target in tenants for db in target.databases]

        def probe(p) -> AuditCheck:
            actor, target, db = p
            observed, detail = self._try_connect(actor, secrets[actor.user]["postgres_password"], db)
            expected = "allow" if target.user == actor.user else "deny"
            return AuditCheck(self.name, actor.user, target.user, f"database {db}", expected, observed, detail)

        # Each probe is a full login (SCRAM); a few at once keep a 50-user audit in seconds, not minutes.
        with ThreadPoolExecutor(4) as pool:
            checks = list(pool.map(probe, probes))
        for actor in tenants:
            checks += self._membership(actor, secrets[actor.user]["postgres_password"], tenants)
        return checks

    def _try_connect(self, actor: Tenant, pw: str, db: str) -> tuple[str, str]:
        try:
            with self._connect(actor.postgres_role, pw, db) as c:
                c.execute("SELECT 1")
            return "allow", "connected"
        except psycopg.OperationalError as exc:
            text = str(exc).strip() or type(exc).__name__
            msg = " ".join(line.strip() for line in text.splitlines() if line.startswith(("FATAL", "connection")))
            msg = (msg or text).split("FATAL:", 1)[-1].strip()
            if any(s in text for s in ("permission denied for database", "not permitted to log in",
                                       "no pg_hba.conf entry")):
                return "deny", msg[:160]
            return "error", msg[:160]

    def _membership(self, actor: Tenant, pw: str, tenants: list[Tenant]) -> list[AuditCheck]:
        """Role membership is another way in (SET ROLE): nobody may act as another user's role."""
        others = [t for t in tenants if t.user != actor.user]
        if not actor.databases or not others:
            return []
        try:
            with self._connect(actor.postgres_role, pw, actor.databases[0]) as c:
                rows = c.execute("SELECT r, pg_has_role(r, 'MEMBER') FROM unnest(%s::text[]) r "
                                 "WHERE r IN (SELECT rolname FROM pg_roles)",
                                 ([t.postgres_role for t in others],)).fetchall()
        except psycopg.Error as exc:
            return [AuditCheck(self.name, actor.user, t.user, f"role {t.postgres_role}", "deny", "error",
                               str(exc).strip()[:160]) for t in others]
        has = dict(rows)
        return [AuditCheck(self.name, actor.user, t.user, f"role {t.postgres_role}", "deny",
                           "allow" if has.get(t.postgres_role) else "deny") for t in others]
