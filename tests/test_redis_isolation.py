"""The tenant Redis ACL against the REAL Debian Redis 7.0 (fixture `redis_server`, loopback).

Nothing is simulated: the command table is the server's own `COMMAND` reply, the attacks are
real connections with a tenant's credentials (RESP3 over a raw socket for CLIENT TRACKING push
messages), and the audit runs against the live ACL. The ACL of before issue 14 is spelled out
here once to reproduce each leak before showing it refused.
"""

from __future__ import annotations

import socket
import time

import pytest
import redis as redislib

from aicommons.plan.policy import acl_rules, password_hash
from aicommons.plan.redis_commands import ALLOW, DENY
from aicommons.tenancy.redis import RedisBackend
from tests.standins.helpers import DictSecrets, resolved_site

OLD_DENIED = ["-@dangerous", "-scan", "-randomkey", "-move", "-copy", "-pubsub", "-dbsize", "-function",
              "-script|flush", "-script|kill", "-select", "+select|0"]


@pytest.fixture
def admin(redis_server):
    with redislib.Redis(port=redis_server.port, username=redis_server.admin_user,
                        password=redis_server.admin_password, decode_responses=True) as r:
        yield r


@pytest.fixture
def world(redis_server, tmp_path):
    site = resolved_site(3)
    secrets = DictSecrets()
    rb = RedisBackend(redis_server.host, redis_server.port, redis_server.admin_user,
                      redis_server.admin_password, tmp_path / "archive")
    for t in site.tenants:
        rb.ensure(t, secrets.for_tenant(t))
    yield site.tenants, secrets, rb
    for t in site.tenants:
        rb.remove(t, purge=True)


def _old_acl(admin, t, password):
    admin.execute_command("ACL", "SETUSER", t.redis_user, "reset", "on", "#" + password_hash(password),
                          f"~{t.redis_prefix}*", "resetchannels", f"&{t.redis_prefix}*", "+@all", *OLD_DENIED)


def _keyless(admin) -> dict[str, list[str]]:
    """Every command and subcommand without key specs, with its ACL categories (the server's table)."""
    out = {}
    for name, info in admin.command().items():
        for sub in info.get("subcommands") or [None]:
            d = info if sub is None else {"name": sub[0], "acl_categories": sub[6], "key_specifications": sub[8]} \
                if isinstance(sub, list) else sub
            if not d.get("key_specifications"):
                out[d.get("name", name)] = list(d.get("acl_categories", []))
    return out


def test_every_keyless_command_is_reviewed(admin):
    keyless = _keyless(admin)
    assert {"scan", "client|tracking", "memory|stats", "dbsize", "pubsub|channels"} <= set(keyless)
    denied = {d.rule for d in DENY}
    categories = {r for r in denied if r.startswith("@")}
    unreviewed = [n for n, cats in keyless.items()
                  if n not in ALLOW and n not in denied and n.split("|")[0] not in denied and not categories & set(cats)]
    assert unreviewed == [], f"keyless commands in neither DENY nor ALLOW: {unreviewed}"
    both = [n for n in ALLOW if n in denied or n.split("|")[0] in denied
            or categories & set(keyless.get(n, []))]
    assert both == []
    # every rule names something the server has
    names = set(admin.command()) | set(keyless)
    assert [d.rule for d in DENY if not d.rule.startswith("@") and d.rule not in names] == []


def _resp3_tracking(port: int, user: str, password: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)

    def cmd(*args: str) -> bytes:
        s.sendall(f"*{len(args)}\r\n".encode() + b"".join(f"${len(a)}\r\n{a}\r\n".encode() for a in args))
        time.sleep(0.1)
        return s.recv(65536)

    assert b"-" != cmd("HELLO", "3", "AUTH", user, password)[:1]
    return s, cmd("CLIENT", "TRACKING", "ON", "BCAST")


def _pushed(s: socket.socket) -> bytes:
    s.settimeout(1)
    try:
        return s.recv(65536)
    except TimeoutError:
        return b""


def test_client_tracking_bcast_leaked_other_tenants_key_names_and_is_now_refused(world, admin, redis_server):
    tenants, secrets, _ = world
    t1, t2 = tenants[0], tenants[1]
    pw1, pw2 = secrets.for_tenant(t1)["redis_password"], secrets.for_tenant(t2)["redis_password"]
    r2 = redislib.Redis(port=redis_server.port, username=t2.redis_user, password=pw2)
    # before: the old ACL lets user1 track every key of the server
    _old_acl(admin, t1, pw1)
    spy, reply = _resp3_tracking(redis_server.port, t1.redis_user, pw1)
    assert reply.startswith(b"+OK")
    r2.set("t:user2:secret-name", "v")
    assert b"t:user2:secret-name" in _pushed(spy)
    spy.close()
    # now
    RedisBackend(redis_server.host, redis_server.port, redis_server.admin_user, redis_server.admin_password,
                 "/nonexistent").ensure(t1, secrets.for_tenant(t1))
    spy, reply = _resp3_tracking(redis_server.port, t1.redis_user, pw1)
    assert b"NOPERM" in reply
    r2.set("t:user2:other-name", "v")
    assert b"t:user2:other-name" not in _pushed(spy)
    spy.close()


def test_memory_stats_and_server_wide_counts_leaked_and_are_now_refused(world, admin, redis_server):
    tenants, secrets, rb = world
    t1 = tenants[0]
    pw1 = secrets.for_tenant(t1)["redis_password"]
    _old_acl(admin, t1, pw1)
    r1 = redislib.Redis(port=redis_server.port, username=t1.redis_user, password=pw1, decode_responses=True)
    assert "keys.count" in r1.execute_command("MEMORY", "STATS")
    assert r1.execute_command("MEMORY", "DOCTOR")
    rb.ensure(t1, secrets.for_tenant(t1))
    for cmd in (("MEMORY", "STATS"), ("MEMORY", "DOCTOR"), ("MEMORY", "MALLOC-STATS"), ("DBSIZE",),
                ("PUBSUB", "CHANNELS"), ("CLIENT", "LIST"), ("INFO", "keyspace"), ("LATENCY", "LATEST"),
                ("SLOWLOG", "GET"), ("FUNCTION", "LIST"), ("SCRIPT", "EXISTS", "0" * 40), ("WAIT", "0", "0"),
                ("ACL", "LOG"), ("ACL", "USERS"), ("SORT", "t:user1:l", "BY", "t:user2:*"), ("LASTSAVE",),
                ("ACL", "LIST"), ("CLIENT", "NO-EVICT", "ON"), ("CLIENT", "PAUSE", "10"),
                ("SPUBLISH", "t:user2:ch", "x"), ("PUBLISH", "t:user2:ch", "x"), ("OBJECT", "FREQ", "t:user2:k"),
                ("EVAL", "return 1", "0"), ("MULTI",)):
        with pytest.raises(redislib.exceptions.NoPermissionError):
            r1.execute_command(*cmd)
    # what stays: the caller's own connection (scripts are gone: test_redis_service.py)
    assert r1.execute_command("ACL", "WHOAMI") == t1.redis_user
    assert r1.execute_command("SPUBLISH", "t:user1:ch", "x") == 0  # shard channels are channel-checked too
    assert r1.execute_command("CLIENT", "INFO").startswith("id=")


def test_rendered_acl_line_is_the_same_rules(world):
    tenants, secrets, _ = world
    rules = acl_rules(tenants[0], "pw")
    assert "-client|tracking" in rules and "-memory|stats" in rules and rules[-1] == "+select|0"


def test_reopening_any_denied_command_fails_the_audit(world, admin):
    tenants, secrets, rb = world
    t1 = tenants[0]
    assert [c for c in rb.audit(tenants, secrets.by_user(tenants)) if not c.ok] == []
    for d in DENY:
        admin.execute_command("ACL", "SETUSER", t1.redis_user, "+" + d.rule)
        bad = [c for c in rb.audit(tenants, secrets.by_user(tenants)) if not c.ok]
        assert bad, f"+{d.rule} went unnoticed"
        assert {c.actor for c in bad} == {"user1"}
        assert any(c.resource.startswith(f"{d.rule}:") for c in bad), (d.rule, [c.resource for c in bad])
        rb.ensure(t1, secrets.for_tenant(t1))
    # the live probes see the two reported channels themselves
    admin.execute_command("ACL", "SETUSER", t1.redis_user, "+client|tracking", "+memory|stats")
    live = {c.resource for c in rb.audit(tenants, secrets.by_user(tenants)) if not c.ok}
    assert {"CLIENT TRACKING ON BCAST", "MEMORY STATS"} <= live
    rb.ensure(t1, secrets.for_tenant(t1))
