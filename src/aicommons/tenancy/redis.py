"""Redis tenancy: one ACL user per user, confined to its key prefix and channel pattern in DB 0.

With `own_servers` (redis.isolation=instance) each user's ACL user lives in a Redis server of its
own (port `Tenant.redis_port`, started by the Redis container's redis-user@<user> unit from the
rendered redis-users.sh): its `maxmemory` and `maxclients` are the user's alone, so one user
filling them takes nothing from another or from the shared services, which keep the main server
(Redis 7.0 has no per-user memory or connection quota). `ensure` then also moves the user's keys
out of the shared server (today's `t:<user>:` and the older `<user>:` prefix) and drops its login
there.

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
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.retry import Retry

from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan import names
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
    own_servers: bool = False  # redis.isolation=instance: each tenant at its own port, same admin login
    # The audit demands own servers (a site-made Redis could have them); an `external:` one cannot.
    require_own: bool = False
    known: dict[str, int] = field(default_factory=dict)  # user -> its own server's port (for observe)
    user_memory_mb: int = 0  # the planned bounds of each own server (verify, service_audit)
    user_clients: int = 0

    def port_of(self, t: Tenant) -> int:
        return t.redis_port if self.own_servers and t.redis_port else self.port

    def _client(self, user: str | None = None, password: str | None = None, port: int | None = None) -> redis.Redis:
        return redis.Redis(host=self.host, port=port or self.port, username=user or self.admin_user,
                           password=password if user else self.admin_password,
                           socket_timeout=5, socket_connect_timeout=5, decode_responses=True,
                           retry=_NO_RETRY)  # redis-py retries failed AUTH too; the engine retries instead

    def _admin(self, fn, port: int | None = None):
        """Run fn(client) as admin; a server that is down is a TemporaryError the next run completes
        (a user's own server is started by the Redis container's service step, just before)."""
        try:
            with self._client(port=port) as r:
                return fn(r)
        except (RedisConnError, RedisTimeout) as exc:
            raise TemporaryError(f"Redis at {self.host}:{port or self.port} is not reachable: {exc}",
                                 delay=2.0) from None

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
        out = {u[2:]: {f"redis.user.{u}"} for u in users if u.startswith("u_")}
        for user, port in sorted(self.known.items()) if self.own_servers else ():
            try:
                with self._client(port=port) as r:
                    own = r.execute_command("ACL", "USERS")
            except (RedisConnError, RedisTimeout):
                continue  # not started yet: the Redis container's service step starts it
            out.update({u[2:]: {f"redis.user.{u}"} for u in own if u == f"u_{user}"})
        return out

    def _getuser(self, r: redis.Redis, t: Tenant) -> dict | None:
        return r.acl_getuser(t.redis_user)

    def verify(self, t: Tenant, secrets: Secrets) -> list[str]:
        port = self.port_of(t)
        info = self._admin(lambda r: self._getuser(r, t), port)
        if info is None:
            return [f"ACL user {t.redis_user} is missing"]
        problems = self._verify_own(t) if port != self.port else []
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
                return str(self._admin(lambda r: r.execute_command("ACL", "DRYRUN", t.redis_user, *cmd), port))
            except ResponseError as exc:
                return str(exc)
        for cmd in (("FLUSHALL",), ("KEYS", "*"), ("SCAN", "0"), ("SELECT", "1"), ("GET", "\x00other:key")):
            if dry(*cmd) == "OK":
                problems.append(f"ACL user {t.redis_user} may run {' '.join(cmd)}")
        if dry("GET", f"{t.redis_prefix}x") != "OK":
            problems.append(f"ACL user {t.redis_user} cannot read its own keys")
        return problems

    def _verify_own(self, t: Tenant) -> list[str]:
        """A user's own server: its bounds as planned, and nothing of the user left in the shared one."""
        got = self._admin(lambda r: {**r.config_get("maxmemory"), **r.config_get("maxclients")}, self.port_of(t))
        problems = []
        if int(got.get("maxmemory", 0)) != self.user_memory_mb * 1024 * 1024:
            problems.append(f"{t.user}'s Redis (port {t.redis_port}) has maxmemory {got.get('maxmemory')}, "
                            f"not {self.user_memory_mb}mb")
        if int(got.get("maxclients", 0)) != self.user_clients:
            problems.append(f"{t.user}'s Redis (port {t.redis_port}) has maxclients {got.get('maxclients')}, "
                            f"not {self.user_clients}")
        if self._admin(lambda r: self._getuser(r, t)) is not None:
            problems.append(f"ACL user {t.redis_user} still logs in to the shared Redis")
        return problems

    # ---- changing ------------------------------------------------------------------------------

    def ensure(self, t: Tenant, secrets: Secrets) -> None:
        def go(r: redis.Redis) -> None:
            # An existing user that is `off` is suspended: only `resume` turns it back on.
            info = self._getuser(r, t)
            enabled = info is None or "on" in info.get("flags", [])
            r.execute_command("ACL", "SETUSER", t.redis_user, *acl_rules(t, secrets["redis_password"], enabled=enabled))
            self._save(r)
            if own and self.user_memory_mb:  # drift undone now; the rendered conf holds them at restart
                r.config_set("maxmemory", f"{self.user_memory_mb}mb")
                r.config_set("maxclients", str(self.user_clients))
        own = self.port_of(t) != self.port
        self._admin(go, self.port_of(t))
        if own:
            self._move_from_shared(t)

    def _move_from_shared(self, t: Tenant) -> None:
        """The user's keys still in the shared server go to its own (TTLs kept), then its login
        there is dropped. A key its own server already has stays there: the shared copy is kept
        and said, never written over. The older `<user>:` prefix (before `t:`) is moved too, to
        `t:<user>:`; not for a user named `t`, whose old prefix is every user's new one."""
        old = [t.redis_prefix] + ([f"{t.user}:"] if f"{t.user}:" != names.REDIS_TENANT_SPACE else [])
        kept = []
        with _binary(self) as main, _binary(self, self.port_of(t)) as own:
            try:
                for prefix in old:
                    for key in list(main.scan_iter(match=_glob_escape(prefix).encode() + b"*", count=500)):
                        new = t.redis_prefix.encode() + key[len(prefix.encode()):]
                        if prefix != t.redis_prefix and key.startswith(names.REDIS_TENANT_SPACE.encode()):
                            continue  # a `t:` key under an old prefix: another user's, not this one's
                        dump, ttl = main.dump(key), main.pttl(key)
                        if dump is None:
                            continue  # expired meanwhile
                        try:
                            own.restore(new, max(ttl, 0), dump)
                        except ResponseError as exc:
                            if "BUSYKEY" not in str(exc):
                                raise
                            kept.append(key.decode(errors="replace"))
                            continue
                        main.unlink(key)
                if main.acl_getuser(t.redis_user) is not None:
                    main.execute_command("ACL", "DELUSER", t.redis_user)
                    self._save(main)
            except (RedisConnError, RedisTimeout) as exc:
                raise TemporaryError(f"Redis at {self.host} is not reachable: {exc}", delay=2.0) from None
        if kept:
            self.warnings.append(f"{t.user}: {len(kept)} keys stay in the shared Redis because its own server "
                                 f"already has them (e.g. {kept[0]!r})")

    def _set_enabled(self, t: Tenant, on: bool) -> None:
        def go(r: redis.Redis) -> None:
            if self._getuser(r, t) is None:
                raise PermanentError(f"Redis has no ACL user {t.redis_user}; run `aicommons apply` first")
            r.execute_command("ACL", "SETUSER", t.redis_user, "on" if on else "off")
            if not on:
                r.execute_command("CLIENT", "KILL", "USER", t.redis_user)
            self._save(r)
        self._admin(go, self.port_of(t))

    def suspend(self, t: Tenant) -> None:
        self._set_enabled(t, False)

    def resume(self, t: Tenant, secrets: Secrets) -> None:
        self._set_enabled(t, True)
        self.ensure(t, secrets)

    def remove(self, t: Tenant, *, purge: bool = False) -> None:
        """Archive (unless purging) and delete the user's keys, then its login. Its own server
        itself goes with the Redis container's service step, which the planner runs after this."""
        port = self.port_of(t)
        if port != self.port and purge:
            try:
                with self._client(port=port) as r:
                    r.ping()
            except (RedisConnError, RedisTimeout):
                return  # its server is gone already, and nothing is to be kept

        def go(r: redis.Redis) -> None:
            keys = list(r.scan_iter(match=f"{_glob_escape(t.redis_prefix)}*", count=500))
            if keys and not purge:
                self._archive(r, t, keys, port)
            for i in range(0, len(keys), 500):
                r.unlink(*keys[i:i + 500])
            r.execute_command("ACL", "DELUSER", t.redis_user)
            self._save(r)
            try:
                r.execute_command("CLIENT", "KILL", "USER", t.redis_user)
            except ResponseError:
                pass  # no such user any more / no clients
        self._admin(go, port)

    def _archive(self, r: redis.Redis, t: Tenant, keys: list[str], port: int | None = None) -> Path:
        out = Path(self.archive_dir) / t.user
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = out / f"redis-{time.strftime('%Y%m%dT%H%M%S')}.json"
        with _binary(self, port) as b:
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
                with self._client(actor.redis_user, pw, self.port_of(actor)) as r:
                    r.ping()
                    checks += self._probe_actor(r, actor, tenants)
                checks += self._other_servers(actor, pw, tenants)
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
        out += self._admin(lambda a: [self._dryrun(a, actor, res, cmd) for res, cmd in table], self.port_of(actor))
        return out

    def _login_refused(self, actor: Tenant, pw: str, port: int, target: str, resource: str,
                       section: str = "data") -> AuditCheck:
        """The actor's own login at another server (another user's own, or the shared one)."""
        try:
            with self._client(actor.redis_user, pw, port) as r:
                r.ping()
            observed: Observed = "allow"
            detail = "logged in"
        except AuthenticationError as exc:
            observed, detail = "deny", str(exc)[:120]
        except (RedisConnError, RedisTimeout, ResponseError) as exc:
            observed, detail = "error", str(exc)[:120]
        return AuditCheck(self.name, actor.user, target, resource, "deny", observed, detail, section=section)

    def _other_servers(self, actor: Tenant, pw: str, tenants: list[Tenant]) -> list[AuditCheck]:
        mine = self.port_of(actor)
        return [self._login_refused(actor, pw, self.port_of(t), t.user, f"login at {t.user}'s Redis :{self.port_of(t)}")
                for t in tenants if t.user != actor.user and self.port_of(t) != mine]

    def service_audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        """Bounds on what one tenant can take from the others, proven live and safely: each server's
        limits read as admin (the shared one's, and each user's own: its maxmemory and maxclients
        are the user's alone), the user's login refused at the shared server, and as each tenant a
        script and a transaction that would be harmless if they ran (`return 1`; MULTI then
        DISCARD) refused. A user without a server of its own on a site-made Redis
        (redis.isolation=acl) fails the "own server" check: it shares memory and connections with
        everybody. An `external:` Redis cannot have them (the plan says so in a note)."""
        checks = self._bounds(self.port, "*", "shared server")
        for t in tenants:
            pw = secrets[t.user]["redis_password"]
            port = self.port_of(t)
            if port == self.port and self.require_own:
                checks.append(AuditCheck(self.name, t.user, "*", "own server (memory and connections shared)",
                                         "deny", "allow", "redis.isolation is not `instance`", section="service"))
            elif port != self.port:
                checks += self._bounds(port, t.user, f"{t.user}'s server")
                checks.append(self._own_limits(t))
                checks.append(self._login_refused(t, pw, self.port, "*", "login at the shared Redis", "service"))
            try:
                with self._client(t.redis_user, pw, port) as r:
                    checks.append(self._refused(t, "EVAL (a script blocks every client)",
                                                lambda r=r: r.eval("return 1", 0)))
                    checks.append(self._refused(t, "MULTI (a transaction passes the memory check once)",
                                                lambda r=r: (r.execute_command("MULTI"), r.execute_command("DISCARD"))))
            except (RedisConnError, RedisTimeout, ResponseError) as exc:
                checks.append(AuditCheck(self.name, t.user, "*", f"login {t.redis_user}", "allow", "error",
                                         str(exc)[:160], section="service"))
        return checks

    def _bounds(self, port: int, actor: str, what: str) -> list[AuditCheck]:
        def read(r: redis.Redis) -> dict[str, str]:
            out: dict[str, str] = {}
            for name in SERVER_BOUNDS:
                out.update({str(k): str(v) for k, v in r.config_get(name).items()})
            return out
        try:
            conf = self._admin(read, port)
        except TemporaryError as exc:
            return [AuditCheck(self.name, actor, "*", f"{what} limits", "deny", "error", str(exc)[:160],
                               section="service")]
        maxmem = _bytes(conf.get("maxmemory", "0"))
        checks = []
        for name, (why, holds) in SERVER_BOUNDS.items():
            value = _bytes(conf.get(name, "0"), maxmem)
            res = f"{name} {value}: {why}" if actor == "*" else f"{what}: {name} {value}: {why}"
            checks.append(AuditCheck(self.name, actor, "*", res, "deny",
                                     "deny" if holds(value, maxmem) else "allow", section="service"))
        return checks

    def _own_limits(self, t: Tenant) -> AuditCheck:
        """The user's own server has the planned maxmemory and maxclients (what bounds it)."""
        problems = [p for p in self._verify_own(t) if "maxmemory" in p or "maxclients" in p]
        return AuditCheck(self.name, t.user, "*", f"own server :{self.port_of(t)} maxmemory "
                          f"{self.user_memory_mb}mb maxclients {self.user_clients}", "deny",
                          "allow" if problems else "deny", "; ".join(problems)[:160], section="service")

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

    def __init__(self, b: RedisBackend, port: int | None = None):
        self.r = redis.Redis(host=b.host, port=port or b.port, username=b.admin_user, password=b.admin_password,
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
