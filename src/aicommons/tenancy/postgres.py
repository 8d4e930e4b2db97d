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
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.model import Tenant
from aicommons.plan.policy import scram_verifier
from aicommons.tenancy.base import AuditCheck, Expected, Observed, Secrets

COMMENT = "aicommons user {user}"
_COMMENT_RE = re.compile(r"^aicommons user ([a-z0-9-]+)$")
def verifier_matches(verifier: str | None, password: str) -> bool:
    """Whether a stored verifier was made from `password` (recomputed with its own salt)."""
    m = re.match(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$", verifier or "")
    if not m:
        return False
    again = scram_verifier(password, base64.b64decode(m.group(2)), int(m.group(1)))
    return hmac.compare_digest(again, verifier or "")


def role_statements(t: Tenant, password: str, limit: int,
                    bounds: Mapping[str, str] | None = None) -> list[sql.Composed]:
    """The statements that create a tenant from nothing (also what the benchmark pipes to psql)."""
    role = sql.Identifier(t.postgres_role)
    out = [sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                   "CONNECTION LIMIT {} PASSWORD {}").format(role, sql.Literal(limit),
                                                             sql.Literal(scram_verifier(password))),
           sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(COMMENT.format(user=t.user)))]
    return out + bound_statements(t, SESSION_BOUNDS if bounds is None else bounds)


def database_statements(t: Tenant, db: str) -> list[sql.Composed]:
    ident, role = sql.Identifier(db), sql.Identifier(t.postgres_role)
    return [sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, role),
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident),
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(COMMENT.format(user=t.user)))]


# Per-role session defaults (ALTER ROLE … SET, applied at each login; issue 23). temp_file_limit
# is PGC_SUSET (guc_tables.c in PostgreSQL 15: "superuser only" in the docs' context column): the
# tenant can neither SET it nor change its own default. The others are PGC_USERSET: a tenant may
# SET them in its own sessions; what still bounds it is the role's CONNECTION LIMIT (docs/security.md).
SESSION_BOUNDS = {
    "statement_timeout": "5min",
    "idle_in_transaction_session_timeout": "10min",
    "temp_file_limit": "1GB",
    "work_mem": "8MB",
}


def bound_statements(t: Tenant, bounds: Mapping[str, str] = SESSION_BOUNDS) -> list[sql.Composed]:
    role = sql.Identifier(t.postgres_role)
    return [sql.SQL("ALTER ROLE {} SET {} = {}").format(role, sql.Identifier(k), sql.Literal(v))
            for k, v in bounds.items()]


# Databases every cluster has: PUBLIC may connect to them and make temporary tables by default,
# and once in, large objects and LISTEN/NOTIFY channels need no further privilege. Tenants lose both.
SHARED_DATABASES = ("postgres", "template1")


def harden_statements() -> list[sql.Composed]:
    return [sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db))
            for db in SHARED_DATABASES]


# What a role that got into a shared database can do there with no privilege of its own beyond
# CONNECT/TEMP: the audit tries each (inside a transaction it rolls back: nothing stays).
SHARED_PROBES = (
    ("temporary table", "BEGIN; CREATE TEMP TABLE aic_audit (x int); ROLLBACK"),
    ("large object", "BEGIN; SELECT lo_create(0); ROLLBACK"),
    ("LISTEN/NOTIFY", "LISTEN aic_audit; NOTIFY aic_audit; UNLISTEN *"),
)


def _grantees(acl: list[str] | None) -> set[str]:
    """Roles named in a datacl (PUBLIC as ''); None means the default ACL, which includes PUBLIC."""
    if acl is None:
        return {""}
    return {item.split("=", 1)[0].strip('"') for item in acl}


# Changes when the cluster-wide hardening or the session bounds do: the engine then ensures every
# tenant again.
RULES = hashlib.sha256((repr(harden_statements()) + repr(SESSION_BOUNDS)).encode()).hexdigest()[:12]

# A database owner may flag its database a template (DROP DATABASE then refuses it) or closed
# (nobody connects: pg_dump, REASSIGN/DROP OWNED cannot run in it). Neither is a tenant's to set.
REOPEN = "ALTER DATABASE {} WITH IS_TEMPLATE false ALLOW_CONNECTIONS true"


@dataclass
class PostgresBackend:
    host: str
    port: int
    admin_user: str
    admin_password: str
    archive_dir: Path
    connection_limit: int = 30
    workers: int = 2  # CREATE DATABASE copies template1 and syncs; two connections roughly halve it
    bounds: Mapping[str, str] = field(default_factory=lambda: dict(SESSION_BOUNDS))
    name: str = "postgres"
    rules: str = RULES

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

    @staticmethod
    def _public_on_shared(c) -> list[str]:
        """`postgres`/`template1` privileges PUBLIC still has (empty = hardened)."""
        rows = c.execute("SELECT d, p FROM unnest(%s::text[]) d, unnest(ARRAY['CONNECT','TEMPORARY']) p "
                         "WHERE d IN (SELECT datname FROM pg_database) AND has_database_privilege('public', d, p)",
                         (list(SHARED_DATABASES),)).fetchall()
        return [f"{p} on {d}" for d, p in rows]

    def _harden(self, c) -> None:
        if self._public_on_shared(c):
            for stmt in harden_statements():
                c.execute(stmt)

    def _databases(self, c, t: Tenant) -> dict[str, tuple[str, list[str] | None]]:
        rows = c.execute("SELECT d.datname, r.rolname, d.datacl::text[] FROM pg_database d "
                         "JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = ANY(%s)", (list(t.databases),))
        return {name: (owner, acl) for name, owner, acl in rows}

    @staticmethod
    def _flagged(c, dbs: list[str]) -> dict[str, str]:
        """Databases among `dbs` that are templates or closed, with what is wrong."""
        rows = c.execute("SELECT datname, datistemplate, datallowconn FROM pg_database WHERE datname = ANY(%s)",
                         (dbs,)).fetchall()
        return {n: " and ".join(w for w, on in (("is a template", tmpl), ("accepts no connections", not conn)) if on)
                for n, tmpl, conn in rows if tmpl or not conn}

    def _reopen(self, c, dbs: list[str]) -> None:
        for db in self._flagged(c, dbs):
            c.execute(sql.SQL(REOPEN).format(sql.Identifier(db)))

    def _rebound(self, c, t: Tenant) -> None:
        role = sql.Identifier(t.postgres_role)
        overrides = c.execute("SELECT d.datname FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                              "JOIN pg_database d ON d.oid = s.setdatabase WHERE r.rolname = %s",
                              (t.postgres_role,)).fetchall()
        for (db,) in overrides:
            for k in self.bounds:
                c.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} RESET {}").format(role, sql.Identifier(db),
                                                                                  sql.Identifier(k)))
        for stmt in bound_statements(t, self.bounds):
            c.execute(stmt)

    def _bound_drift(self, c, t: Tenant) -> list[str]:
        """Session bounds that differ from SESSION_BOUNDS: the role's own defaults, and any per-database
        default of the role that overrides them (ALTER ROLE … IN DATABASE … SET)."""
        rows = c.execute("SELECT s.setdatabase, s.setconfig FROM pg_db_role_setting s JOIN pg_roles r "
                         "ON r.oid = s.setrole WHERE r.rolname = %s", (t.postgres_role,)).fetchall()
        out = []
        for dbid, config in rows:
            have = dict(item.split("=", 1) for item in config or [])
            for k, want in self.bounds.items():
                if dbid == 0 and have.get(k) != want:
                    out.append(f"role {t.postgres_role} {k} is {have.get(k, 'unset')}, not {want}")
                elif dbid != 0 and k in have:
                    out.append(f"role {t.postgres_role} overrides {k} in a database ({have[k]})")
        if not any(dbid == 0 for dbid, _ in rows):
            out += [f"role {t.postgres_role} {k} is unset, not {v}" for k, v in self.bounds.items()]
        return out

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
            for what in self._public_on_shared(c):
                problems.append(f"PUBLIC has {what}: every tenant can reach it")
            problems += self._bound_drift(c, t)
            problems += [f"database {db} {what}" for db, what in sorted(self._flagged(c, list(t.databases)).items())]
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
            self._harden(c)
            row = self._role(c, t)
            if row is None:
                for stmt in role_statements(t, password, self.connection_limit, self.bounds):
                    c.execute(stmt)
            else:
                # An existing NOLOGIN role is a suspended user: only `resume` turns logins back on.
                login, limit, powers, verifier = row
                if limit != self.connection_limit or powers:
                    c.execute(sql.SQL("ALTER ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                      "NOBYPASSRLS CONNECTION LIMIT {}").format(role, sql.Literal(self.connection_limit)))
                if not verifier_matches(verifier, password):
                    c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, sql.Literal(scram_verifier(password))))
                if self._bound_drift(c, t):
                    self._rebound(c, t)
            existing = self._databases(c, t)
            self._reopen(c, list(existing))
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

    # ---- removal -------------------------------------------------------------------------------

    def _dependencies(self, c, role: str, own: list[str]) -> dict[str, int]:
        """Databases (name -> count) holding objects the role owns or privileges granted to it,
        outside its own databases (pg_shdepend; '' = shared objects such as another tenant's
        database). These are what make DROP ROLE fail."""
        rows = c.execute(
            "SELECT coalesce(d.datname, ''), count(*) FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid "
            "LEFT JOIN pg_database d ON d.oid = s.dbid "
            "WHERE r.rolname = %s AND s.refclassid = 'pg_authid'::regclass AND s.deptype IN ('o', 'a', 'i', 'r') "
            "AND NOT (s.classid = 'pg_database'::regclass AND s.deptype = 'o' "
            "         AND s.objid IN (SELECT oid FROM pg_database WHERE datname = ANY(%s))) "
            "AND coalesce(d.datname, '') <> ALL(%s) GROUP BY 1", (role, own, own)).fetchall()
        return dict(rows)

    def _tenant_databases(self, c) -> set[str]:
        """Every database a tenant role owns (known by the role's COMMENT, which only the admin can
        set; a database's own comment its owner could change): a flag on one of these is a
        tenant's doing and the control plane undoes it; any other closed database is the operator's."""
        rows = c.execute("SELECT d.datname, shobj_description(r.oid, 'pg_authid') FROM pg_database d "
                         "JOIN pg_roles r ON r.oid = d.datdba").fetchall()
        return {n for n, comment in rows if _COMMENT_RE.match(comment or "")}

    def removal_blockers(self, t: Tenant) -> list[str]:
        """What would stop `remove` from finishing, found without changing anything: dependencies in
        a database nobody can connect to (REASSIGN/DROP OWNED must run inside it), unless a tenant
        closed it (remove reopens those first)."""
        with self._admin() as c:
            if self._role(c, t) is None:
                return []
            deps = self._dependencies(c, t.postgres_role, list(t.databases))
            closed = {n for (n,) in c.execute("SELECT datname FROM pg_database WHERE NOT datallowconn")}
            closed -= self._tenant_databases(c)
        return [f"role {t.postgres_role} owns or holds {n} objects in database {db}, which does not accept "
                f"connections; connect it (ALTER DATABASE {db} ALLOW_CONNECTIONS true) or clear them by hand"
                for db, n in sorted(deps.items()) if db in closed]

    def remove(self, t: Tenant, *, purge: bool = False) -> None:
        """Archive, then drop the databases and the role, in an order a failure cannot strand.

        Refused before anything changes if something would block it (removal_blockers). Tenant
        databases flagged template or closed (its own, or another tenant's where it holds objects)
        are reopened first: a template cannot be dropped, a closed database neither dumped nor
        cleaned. Logins are revoked, so the tenant cannot create new dependencies meanwhile.
        Whatever the role owns elsewhere is reassigned to that database's owner (a large object in
        `postgres` to the admin), privileges other tenants granted to it are revoked (DROP OWNED),
        then DROP ROLE. Every step tolerates having run before: a re-run after a crash completes
        (tests/test_pg_service.py fails each statement in turn and re-runs)."""
        blockers = self.removal_blockers(t)
        if blockers:
            raise PermanentError(f"cannot remove {t.user} from PostgreSQL, nothing was changed: " + "; ".join(blockers))
        role = sql.Identifier(t.postgres_role)
        with self._admin() as c:
            present = [db for db in t.databases if db in self._databases(c, t)]
            if self._role(c, t) is not None:
                # Logins off first, so the role cannot flag a database again while it is reopened.
                c.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
                c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                          (t.postgres_role,))
                deps = self._dependencies(c, t.postgres_role, list(t.databases))
                self._reopen(c, [*present, *(set(deps) & self._tenant_databases(c))])
        if not purge and present:
            self.archive(t, present)
        with self._admin() as c:
            for db in present:
                self._reopen(c, [db])  # a re-run after a crash between reopen and here
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            if self._role(c, t) is None:
                return
            deps = self._dependencies(c, t.postgres_role, list(t.databases))
            owners = dict(c.execute("SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba"))
        # Shared objects ('' in deps) are handled from any database: `postgres` always runs.
        for db in sorted({db for db in deps if db} | {"postgres"}):
            heir = owners.get(db, self.admin_user)
            heir = self.admin_user if heir == t.postgres_role else heir
            with self._connect(dbname=db) as c:
                c.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(role, sql.Identifier(heir)))
                c.execute(sql.SQL("DROP OWNED BY {}").format(role))
        with self._admin() as c:
            try:
                c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
            except psycopg.errors.DependentObjectsStillExist as exc:
                raise PermanentError(f"role {t.postgres_role} could not be dropped: {str(exc).strip()}; "
                                     "run the removal again") from None

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
            expected: Expected = "allow" if target.user == actor.user else "deny"
            return AuditCheck(self.name, actor.user, target.user, f"database {db}", expected, observed, detail)

        # Each probe is a full login (SCRAM); a few at once keep a 50-user audit in seconds, not minutes.
        with ThreadPoolExecutor(4) as pool:
            checks = list(pool.map(probe, probes))
            shared = self._shared_databases(tenants)
            for got in pool.map(lambda a: self._shared_probes(a, secrets[a.user]["postgres_password"], shared),
                                tenants):
                checks += got
        for actor in tenants:
            checks += self._membership(actor, secrets[actor.user]["postgres_password"], tenants)
        checks += self._privileges(tenants, shared)
        return checks

    def _shared_databases(self, tenants: list[Tenant]) -> list[str]:
        """Every database that is no tenant's and accepts connections (postgres, template1, services')."""
        theirs = {db for t in tenants for db in t.databases}
        with self._admin() as c:
            names = [n for (n,) in c.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")]
        return [n for n in names if n not in theirs]

    def _shared_probes(self, actor: Tenant, pw: str, dbs: list[str]) -> list[AuditCheck]:
        """Log in to each shared database as the tenant; where that works, try what a shared database
        offers every role that gets in: temp tables, large objects, LISTEN/NOTIFY (all tenants meet there)."""
        out = []
        for db in dbs:
            observed, detail = self._try_connect(actor, pw, db)
            out.append(AuditCheck(self.name, actor.user, "*", f"database {db}", "deny", observed, detail))
            if observed != "allow":
                continue
            for what, stmt in SHARED_PROBES:
                got: Observed
                try:
                    with self._connect(actor.postgres_role, pw, db) as c:
                        c.execute(stmt)
                    got, why = "allow", "ran"
                except psycopg.errors.InsufficientPrivilege as exc:
                    got, why = "deny", str(exc).strip()[:160]
                except psycopg.Error as exc:
                    got, why = "error", str(exc).strip()[:160]
                out.append(AuditCheck(self.name, actor.user, "*", f"{what} in {db}", "deny", got, why))
        return out

    def _privileges(self, tenants: list[Tenant], shared: list[str]) -> list[AuditCheck]:
        """What the catalog grants, asked as the admin: a privilege reopened by hand shows here even
        where pg_hba keeps the login out (the hole is one pg_hba edit away)."""
        rows = [(a, t.user, db, p) for a in tenants for t in tenants if t.user != a.user
                for db in t.databases for p in ("CONNECT", "CREATE", "TEMPORARY")]
        rows += [(a, "*", db, p) for a in tenants for db in shared for p in ("CONNECT", "TEMPORARY")]
        if not rows:
            return []
        with self._admin() as c:
            have = c.execute(
                "SELECT r, d, p, has_database_privilege(r, d, p) FROM unnest(%s::text[], %s::text[], %s::text[]) "
                "AS x(r, d, p) WHERE r IN (SELECT rolname FROM pg_roles) AND d IN (SELECT datname FROM pg_database)",
                ([a.postgres_role for a, *_ in rows], [db for _, _, db, _ in rows], [p for *_, p in rows])).fetchall()
        granted = {(r, d, p): g for r, d, p, g in have}
        return [AuditCheck(self.name, a.user, target, f"{p} on database {db} (granted)", "deny",
                           "allow" if granted.get((a.postgres_role, db, p)) else "deny")
                for a, target, db, p in rows]

    def service_audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        """Bounds on what one tenant can take, proven live and safely: each session bound set on the
        role (read as admin), the superuser-only one refused when the tenant tries to lift it in its
        own session (refused at once; had it worked, it lasted that one session), and no database
        of the tenant's flagged template or closed."""
        checks: list[AuditCheck] = []
        with self._admin() as c:
            for t in tenants:
                drift = self._bound_drift(c, t) if self._role(c, t) is not None else [f"role {t.postgres_role} missing"]
                for k, v in self.bounds.items():
                    bad = [d for d in drift if k in d or "missing" in d]
                    checks.append(AuditCheck(self.name, t.user, "*", f"{k} = {v} on role {t.postgres_role}", "deny",
                                             "allow" if bad else "deny", "; ".join(bad)[:160], section="service"))
                flagged = self._flagged(c, list(t.databases))
                for db in t.databases:
                    checks.append(AuditCheck(self.name, t.user, "*", f"database {db} template or closed", "deny",
                                             "allow" if db in flagged else "deny", flagged.get(db, ""),
                                             section="service"))
        for t in tenants:
            if not t.databases:
                continue
            observed: Observed
            try:
                with self._connect(t.postgres_role, secrets[t.user]["postgres_password"], t.databases[0]) as c:
                    c.execute("SET temp_file_limit = -1")
                observed, detail = "allow", "lifted"
            except psycopg.errors.InsufficientPrivilege as exc:
                observed, detail = "deny", str(exc).strip()[:160]
            except psycopg.Error as exc:
                observed, detail = "error", str(exc).strip()[:160]
            checks.append(AuditCheck(self.name, t.user, "*", "SET temp_file_limit = -1 (superuser only)", "deny",
                                     observed, detail, section="service"))
        return checks

    def _try_connect(self, actor: Tenant, pw: str, db: str) -> tuple[Observed, str]:
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


def run_psql_script(host: str, port: int, user: str, password: str, script: str, what: str) -> None:
    """A rendered psql script (it uses \\gexec and \\connect) run by the admin against an `external:`
    server, which has no PostgreSQL container to run it on each configuration apply."""
    psql = shutil.which("psql")
    if psql is None:
        raise PermanentError("psql is not installed (postgresql-client-15; scripts/install.sh installs it)")
    proc = subprocess.run([psql, "-q", "-X", "-h", host, "-p", str(port), "-U", user, "-d", "postgres", "-f", "-"],
                          input=script.encode(), capture_output=True,
                          env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}, timeout=120)
    if proc.returncode != 0:
        raise TemporaryError(f"{what} at {host}:{port} failed: "
                             f"{proc.stderr.decode(errors='replace').strip()[-500:]}", delay=2.0)
