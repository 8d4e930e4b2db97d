"""Redis tenancy: one ACL user per user, confined to its key prefix and channel pattern in DB 0.

DB numbers isolate nothing (any client may SELECT), so the default is ACL + prefix. Keyless
commands (SCAN, KEYS, RANDOMKEY, FLUSH*) ignore key patterns and are denied, as are commands that
reach other databases (MOVE, COPY, SELECT other than 0). Users persist with `ACL SAVE` into the
server's aclfile. Passwords are sent as SHA-256 hashes (`#...`), never in clear.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.retry import Retry

from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.model import Tenant
from aicommons.plan.policy import DENIED, acl_rules, password_hash
from aicommons.plan.redis_commands import DENY, probe_argv
from aicommons.tenancy.base import AuditCheck, Expected, Observed, Secrets

PROBE = "aic-audit"
_NO_RETRY = Retry(NoBackoff(), 0)


# Changes when the deny list does: the engine then ensures every tenant's ACL user again.
RULES = hashlib.sha256(" ".join(DENIED).encode()).hexdigest()[:12]


@dataclass
class RedisBackend:
    host: str
    port: int
    admin_user: str
    admin_password: str
    archive_dir: Path
    warnings: list[str] = field(default_factory=list)
    name: str = "redis"
    rules: str = RULES

    def _client(self, user: str | None = None, password: str | None = None) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, username=user or self.admin_user,
                           password=password if user else self.admin_password,
                           socket_timeout=5, socket_connect_timeout=5, decode_responses=True,
                           retry=_NO_RETRY)  # redis-py retries failed AUTH too; the engine retries instead

    def _admin(self, fn):
        """Run fn(client) as admin; a server that is down is a TemporaryError the next run completes."""
        try:
            with self._client() as r:
                return fn(r)
        except (RedisConnError, RedisTimeout) as exc:
            raise TemporaryError(f"Redis at {self.host}:{self.port} is not reachable: {exc}", delay=2.0) from None

    @staticmethod
    def _save(r: redis.Redis) -> None:
        try:
            r.execute_command("ACL", "SAVE")
        except ResponseError as exc:
            raise PermanentError(f"Redis could not persist users ({exc}); run the server with `aclfile` "
                                 "(users defined in redis.conf cannot be saved)") from None

    # ---- reading -------------------------------------------------------------------------------

    def observe(self) -> dict[str, set[str]]:
        users = self._admin(lambda r: r.execute_command("ACL", "USERS"))
        return {u[2:]: {f"redis.user.{u}"} for u in users if u.startswith("u_")}

    def _getuser(self, r: redis.Redis, t: Tenant) -> dict | None:
        return r.acl_getuser(t.redis_user)

    def verify(self, t: Tenant, secrets: Secrets) -> list[str]:
        info = self._admin(lambda r: self._getuser(r, t))
        if info is None:
            return [f"ACL user {t.redis_user} is missing"]
        problems = []
        if password_hash(secrets["redis_password"]) not in info.get("passwords", []):
            problems.append(f"ACL user {t.redis_user} password differs from the stored secret")
        keys = info.get("keys")
        keys = keys if isinstance(keys, str) else " ".join(keys or [])
        if keys != f"~{t.redis_prefix}*":
            problems.append(f"ACL user {t.redis_user} key patterns are {keys!r}, not ~{t.redis_prefix}*")
        chans = info.get("channels")
        chans = chans if isinstance(chans, str) else " ".join(chans or [])
        if chans != f"&{t.redis_prefix}*":
            problems.append(f"ACL user {t.redis_user} channel patterns are {chans!r}")
        # Commands are checked by behaviour (ACL DRYRUN), not by parsing the server's rule text.
        def dry(*cmd: str) -> str:
            try:
                return str(self._admin(lambda r: r.execute_command("ACL", "DRYRUN", t.redis_user, *cmd)))
            except ResponseError as exc:
                return str(exc)
        for cmd in (("FLUSHALL",), ("KEYS", "*"), ("SCAN", "0"), ("SELECT", "1"), ("GET", "\x00other:key")):
            if dry(*cmd) == "OK":
                problems.append(f"ACL user {t.redis_user} may run {' '.join(cmd)}")
        if dry("GET", f"{t.redis_prefix}x") != "OK":
            problems.append(f"ACL user {t.redis_user} cannot read its own keys")
        return problems

    # ---- changing ------------------------------------------------------------------------------

    def ensure(self, t: Tenant, secrets: Secrets) -> None:
        def go(r: redis.Redis) -> None:
            # An existing user that is `off` is suspended: only `resume` turns it back on.
            info = self._getuser(r, t)
            enabled = info is None or "on" in info.get("flags", [])
            r.execute_command("ACL", "SETUSER", t.redis_user, *acl_rules(t, secrets["redis_password"], enabled=enabled))
            self._save(r)
        self._admin(go)

    def _set_enabled(self, t: Tenant, on: bool) -> None:
        def go(r: redis.Redis) -> None:
            if self._getuser(r, t) is None:
                raise PermanentError(f"Redis has no ACL user {t.redis_user}; run `aicommons apply` first")
            r.execute_command("ACL", "SETUSER", t.redis_user, "on" if on else "off")
            if not on:
                r.execute_command("CLIENT", "KILL", "USER", t.redis_user)
            self._save(r)
        self._admin(go)

    def suspend(self, t: Tenant) -> None:
        self._set_enabled(t, False)

    def resume(self, t: Tenant, secrets: Secrets) -> None:
        self._set_enabled(t, True)
        self.ensure(t, secrets)

    def remove(self, t: Tenant, *, purge: bool = False) -> None:
        def go(r: redis.Redis) -> None:
            keys = list(r.scan_iter(match=f"{_glob_escape(t.redis_prefix)}*", count=500))
            if keys and not purge:
                self._archive(r, t, keys)
            for i in range(0, len(keys), 500):
                r.unlink(*keys[i:i + 500])
            r.execute_command("ACL", "DELUSER", t.redis_user)
            self._save(r)
            try:
                r.execute_command("CLIENT", "KILL", "USER", t.redis_user)
            except ResponseError:
                pass  # no such user any more / no clients
        self._admin(go)

    def _archive(self, r: redis.Redis, t: Tenant, keys: list[str]) -> Path:
        out = Path(self.archive_dir) / t.user
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = out / f"redis-{time.strftime('%Y%m%dT%H%M%S')}.json"
        with _binary(self) as b:
            items = [{"key": k, "ttl_ms": b.pttl(k), "dump": base64.b64encode(b.dump(k) or b"").decode()}
                     for k in keys]
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"user": t.user, "keys": items}, f)
        return path

    # ---- audit ---------------------------------------------------------------------------------

    def audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        checks: list[AuditCheck] = []
        for actor in tenants:
            pw = secrets[actor.user]["redis_password"]
            try:
                with self._client(actor.redis_user, pw) as r:
                    r.ping()
                    checks += self._probe_actor(r, actor, tenants)
            except (RedisConnError, RedisTimeout, ResponseError) as exc:
                checks.append(AuditCheck(self.name, actor.user, actor.user, f"login {actor.redis_user}",
                                         "allow", "error", str(exc)[:160]))
        return checks

    def _probe_actor(self, r: redis.Redis, actor: Tenant, tenants: list[Tenant]) -> list[AuditCheck]:
        out = []

        def probe(target: str, resource: str, fn) -> None:
            expected: Expected = "allow" if target == actor.user else "deny"
            observed, detail = _outcome(fn, "")
            out.append(AuditCheck(self.name, actor.user, target, resource, expected, observed, detail))

        for target in tenants:
            key = f"{target.redis_prefix}{PROBE}"
            if target.user == actor.user:
                probe(target.user, f"key {key}", lambda k=key: r.set(k, "1", ex=60))
            else:
                probe(target.user, f"key {key}", lambda k=key: r.get(k))
                probe(target.user, f"write {key}", lambda k=key: r.set(k, actor.user, ex=60))
            probe(target.user, f"channel {key}", lambda k=key: r.publish(k, "audit"))
        # Keyless and cross-database commands reveal or touch everybody's keys ("*"): all refused.
        for resource, cmd in (("keyless SCAN", ("SCAN", "0")), ("keyless KEYS", ("KEYS", "*")),
                              ("keyless RANDOMKEY", ("RANDOMKEY",)), ("SELECT 1", ("SELECT", "1"))):
            probe("*", resource, lambda c=cmd: r.execute_command(*c))
        # Server-wide channels, tried for real: both only read (tracking is switched off again).
        probe("*", "CLIENT TRACKING ON BCAST", lambda: _track_once(r))
        probe("*", "MEMORY STATS", lambda: r.execute_command("MEMORY", "STATS"))
        # Every keyless command of the table is asked about (ACL DRYRUN, as admin), never run.
        table: list[tuple[str, tuple[str, ...]]] = [("FLUSHALL", ("FLUSHALL",)), ("FLUSHDB", ("FLUSHDB",))]
        own = f"{actor.redis_prefix}{PROBE}"
        table += [(f"{d.rule}: {' '.join(d.probe)}", probe_argv(d, own)) for d in DENY]
        out += self._admin(lambda a: [self._dryrun(a, actor, res, cmd) for res, cmd in table])
        return out

    def service_audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        """Bounds on what one tenant can take from the others, proven live and safely: the server's
        limits read as admin, then as each tenant a script and a transaction that would be
        harmless if they ran (`return 1`; MULTI then DISCARD) must be refused."""
        def read(r: redis.Redis) -> dict[str, str]:
            out: dict[str, str] = {}
            for name in SERVER_BOUNDS:
                out.update({str(k): str(v) for k, v in r.config_get(name).items()})
            return out
        conf = self._admin(read)
        maxmem = _bytes(conf.get("maxmemory", "0"))
        checks = []
        for name, (why, holds) in SERVER_BOUNDS.items():
            value = _bytes(conf.get(name, "0"), maxmem)
            checks.append(AuditCheck(self.name, "*", "*", f"{name} {value}: {why}", "deny",
                                     "deny" if holds(value, maxmem) else "allow", section="service"))
        for t in tenants:
            try:
                with self._client(t.redis_user, secrets[t.user]["redis_password"]) as r:
                    checks.append(self._refused(t, "EVAL (a script blocks every client)",
                                                lambda r=r: r.eval("return 1", 0)))
                    checks.append(self._refused(t, "MULTI (a transaction passes the memory check once)",
                                                lambda r=r: (r.execute_command("MULTI"), r.execute_command("DISCARD"))))
            except (RedisConnError, RedisTimeout, ResponseError) as exc:
                checks.append(AuditCheck(self.name, t.user, "*", f"login {t.redis_user}", "allow", "error",
                                         str(exc)[:160], section="service"))
        return checks

    def _refused(self, t: Tenant, resource: str, fn) -> AuditCheck:
        observed, detail = _outcome(fn, "ran")
        return AuditCheck(self.name, t.user, "*", resource, "deny", observed, detail, section="service")

    def _dryrun(self, a: redis.Redis, actor: Tenant, resource: str, cmd: tuple[str, ...]) -> AuditCheck:
        try:
            res = a.execute_command("ACL", "DRYRUN", actor.redis_user, *cmd)
            observed: Observed = "allow" if str(res) == "OK" else "deny"
            return AuditCheck(self.name, actor.user, "*", resource, "deny", observed, str(res)[:120])
        except ResponseError as exc:
            return AuditCheck(self.name, actor.user, "*", resource, "deny", "error", str(exc)[:120])


# What must hold server-wide for one tenant to be bounded (render/services.redis_conf writes it):
# config name -> (why, test on the value in bytes given maxmemory in bytes).
SERVER_BOUNDS = {
    "maxmemory": ("memory is bounded at all", lambda v, m: v > 0),
    "proto-max-bulk-len": ("one command allocates at most 1/8 of maxmemory", lambda v, m: 0 < v <= m // 8),
    "maxmemory-clients": ("client buffers together are bounded (largest evicted first)", lambda v, m: v != 0),
    "client-query-buffer-limit": ("one client's unread input is bounded", lambda v, m: 0 < v <= m // 2),
}


def _bytes(value: str, maxmemory: int = 0) -> int:
    """A CONFIG GET memory value in bytes; `maxmemory-clients` may be a percentage of maxmemory."""
    return maxmemory * int(value[:-1]) // 100 if value.endswith("%") else int(value)


def _track_once(r: redis.Redis) -> None:
    r.execute_command("CLIENT", "TRACKING", "ON", "BCAST")
    r.execute_command("CLIENT", "TRACKING", "OFF")


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class _binary:
    """A short-lived admin connection that returns bytes (for DUMP)."""

    def __init__(self, b: RedisBackend):
        self.r = redis.Redis(host=b.host, port=b.port, username=b.admin_user, password=b.admin_password,
                             socket_timeout=5, retry=_NO_RETRY)

    def __enter__(self) -> redis.Redis:
        return self.r

    def __exit__(self, *exc) -> None:
        self.r.close()


def _outcome(fn, ran: str) -> tuple[Observed, str]:
    """What Redis did with a probe: allowed it, refused it by ACL, or failed it otherwise."""
    try:
        fn()
        return "allow", ran
    except NoPermissionError as exc:
        return "deny", str(exc)[:120]
    except ResponseError as exc:
        return "error", str(exc)[:120]
