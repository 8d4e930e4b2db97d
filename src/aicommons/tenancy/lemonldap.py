"""The people LemonLDAP::NG signs in: one row per site user in its database, their sessions, and
aicommons' own invitations (LL::NG 2.16 has none: identity-facts caveat 6).

The schema is render/lemonldap.py `schema_sql` (users, the active_users view sign-in reads,
PgJSON sessions, invitations). A new person gets a row with no usable password (NULL: LL::NG's
`password=ENCRYPT(?,password)` never matches it) and an invitation: a random token whose SHA-256
alone is stored, valid for `identity.invitation_hours`. Redeeming it sets the password through
the same SQL function LL::NG's own password change uses (`encrypt(text)`, bcrypt in pgcrypto).
Suspend disables the row and deletes the person's SSO sessions (their second factors, kept in
persistent sessions, stay); remove deletes the row (invitations cascade) and every session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg

from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.model import Tenant
from aicommons.render.lemonldap import DB
from aicommons.tenancy.base import AuditCheck, Secrets
from aicommons.tenancy.postgres import run_psql_script

ADDRESS = "lemonldap.user.{user}"
# LL::NG sessions in the PgJSON table (read back from a real one): a sign-in is `_session_kind`
# SSO and holds the exported `uid`; what outlives it (registered second factors) is Persistent
# and names the person in `_session_uid`.
END_SESSIONS = "DELETE FROM sessions WHERE a_session ->> 'uid' = %s AND a_session ->> '_session_kind' = 'SSO'"
ALL_SESSIONS = "DELETE FROM sessions WHERE a_session ->> 'uid' = %s OR a_session ->> '_session_uid' = %s"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class LemonldapBackend:
    host: str
    port: int
    admin_user: str
    admin_password: str
    schema: str = ""  # render/lemonldap.py schema_sql: made here where no PostgreSQL container runs it
    name: str = "lemonldap"
    service: str = "postgres"  # what must run for it to be read: the people live in PostgreSQL
    _bootstrapped: bool = False

    def _bootstrap(self) -> None:
        """The same rendered SQL the site's PostgreSQL container runs on each configuration apply
        (role, database, tables, functions; idempotent), for an `external:` server, which has no
        such step. Through psql: the file uses its \\gexec and \\connect."""
        if self._bootstrapped or not self.schema:
            return
        run_psql_script(self.host, self.port, self.admin_user, self.admin_password, self.schema,
                        f"making the sign-in database {DB!r}")
        self._bootstrapped = True

    def _db(self):
        try:
            return psycopg.connect(host=self.host, port=self.port, user=self.admin_user, password=self.admin_password,
                                   dbname=DB, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise TemporaryError(f"the sign-in database {DB!r} at {self.host}:{self.port} is not reachable: "
                                 f"{str(exc).strip()}", delay=2.0) from None

    def observe(self) -> dict[str, set[str]]:
        with self._db() as c:
            return {uid: {ADDRESS.format(user=uid)} for (uid,) in c.execute("SELECT uid FROM users")}

    def ensure(self, tenant: Tenant, secrets: Secrets) -> None:
        """The person's row (e-mail and name follow site.yaml); a password, once set, is theirs."""
        if not tenant.email:
            raise PermanentError(f"user {tenant.user} has no e-mail; the sign-in provider needs one (site.yaml)")
        self._bootstrap()
        with self._db() as c:
            c.execute("INSERT INTO users (uid, mail, name, operator) VALUES (%s, %s, %s, %s) "
                      "ON CONFLICT (uid) DO UPDATE SET mail = EXCLUDED.mail, name = EXCLUDED.name, "
                      "operator = EXCLUDED.operator",
                      (tenant.user, tenant.email, tenant.user, tenant.operator))

    def verify(self, tenant: Tenant, secrets: Secrets) -> list[str]:
        with self._db() as c:
            row = c.execute("SELECT mail FROM users WHERE uid = %s", (tenant.user,)).fetchone()
        if row is None:
            return [f"{tenant.user} is not in the sign-in provider"]
        return [] if row[0] == tenant.email else [f"{tenant.user}'s e-mail there is {row[0]}, not {tenant.email}"]

    def remove(self, tenant: Tenant, *, purge: bool = False) -> None:
        with self._db() as c, c.transaction():
            c.execute(ALL_SESSIONS, (tenant.user, tenant.user))
            c.execute("DELETE FROM users WHERE uid = %s", (tenant.user,))

    def suspend(self, tenant: Tenant) -> None:
        with self._db() as c, c.transaction():
            c.execute("UPDATE users SET enabled = false WHERE uid = %s", (tenant.user,))
            c.execute(END_SESSIONS, (tenant.user,))

    def resume(self, tenant: Tenant, secrets: Secrets) -> None:
        with self._db() as c:
            c.execute("UPDATE users SET enabled = true WHERE uid = %s", (tenant.user,))

    def is_suspended(self, tenant: Tenant) -> bool:
        with self._db() as c:
            row = c.execute("SELECT enabled FROM users WHERE uid = %s", (tenant.user,)).fetchone()
        return row is not None and not row[0]

    def audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        return []  # people sign in with passwords only they know; the Traefik tests prove the rules

    # ---- enrollment ------------------------------------------------------------------------------

    def invite(self, user: str, hours: int, token: str) -> None:
        """A one-time invitation for this token (earlier unused ones of this person are withdrawn);
        the token itself is never stored here."""
        with self._db() as c, c.transaction():
            if c.execute("SELECT 1 FROM users WHERE uid = %s", (user,)).fetchone() is None:
                raise PermanentError(f"{user} is not in the sign-in provider yet; run `aicommons users add {user}`")
            c.execute("DELETE FROM invitations WHERE uid = %s", (user,))
            c.execute("INSERT INTO invitations (token_sha256, uid, expires) "
                      "VALUES (%s, %s, now() + make_interval(hours => %s))", (token_hash(token), user, hours))

    def invitation_user(self, token: str) -> str | None:
        """Whose live invitation this token is (None: unknown, used or expired)."""
        with self._db() as c:
            row = c.execute("SELECT uid FROM invitations WHERE token_sha256 = %s AND expires > now()",
                            (token_hash(token),)).fetchone()
        return row[0] if row else None

    def redeem(self, token: str, password: str) -> str | None:
        """Set the password of the token's person and spend the token, in one transaction; the
        person's name, or None when the token is unknown, used or expired."""
        with self._db() as c, c.transaction():
            row = c.execute("DELETE FROM invitations WHERE token_sha256 = %s AND expires > now() RETURNING uid",
                            (token_hash(token),)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE users SET password = encrypt(%s) WHERE uid = %s", (password, row[0]))
        return str(row[0])
