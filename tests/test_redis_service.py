"""Service isolation of the shared Redis (issue 23, attacks 1-3) against the REAL Debian Redis 7.0.

Real: redis-server started with the resource settings `render/services.redis_conf` writes (so the
server itself checks they are valid Redis 7.0 configuration), tenants made by the real
`RedisBackend.ensure`, attacks sent over real connections with the tenant's own password. Each
server is the test's own: an attack that worked would leave it frozen or full. A user's own
server (redis.isolation=instance) is started from its rendered configuration too.
Nothing is simulated.
"""

from __future__ import annotations

import dataclasses

import pytest
import redis as redislib

from aicommons.plan import names
from aicommons.tenancy.redis import RedisBackend
from tests.servers import redis_limits, start_redis, start_redis_user
from tests.standins.helpers import DictSecrets, resolved_site

MEMORY_MB = 256  # the Redis container's memory in these tests: a small server fills fast


def rendered_limits(resolved, memory_mb: int = MEMORY_MB) -> tuple[str, ...]:
    return redis_limits(resolved, memory_mb)


@pytest.fixture
def bounded():
    """A Redis of this test's own with the rendered limits, and three tenants on it."""
    resolved = resolved_site(3)
    srv = start_redis(extra=rendered_limits(resolved))
    secrets = DictSecrets()
    rb = RedisBackend(srv.host, srv.port, srv.admin_user, srv.admin_password, srv.dir / "archive")
    for t in resolved.tenants:
        rb.ensure(t, secrets.for_tenant(t))

    def login(t, **kw) -> redislib.Redis:
        return redislib.Redis(port=srv.port, username=t.redis_user, password=secrets.for_tenant(t)["redis_password"],
                              decode_responses=True, **kw)

    admin = redislib.Redis(port=srv.port, username=srv.admin_user, password=srv.admin_password, decode_responses=True)
    yield resolved.tenants, login, admin, srv
    admin.close()
    srv.cleanup()


def test_attack1_a_lua_busy_loop_cannot_freeze_redis(bounded):
    """Issue 23 #1: `EVAL "redis.call('SET',KEYS[1],'1') while true do end"` made every client get
    BUSY and SCRIPT KILL answer UNKILLABLE. Here the loop is bounded (2 s) so a regression fails the
    test instead of freezing it; the tenant must not be able to run any script at all."""
    tenants, login, admin, _srv = bounded
    a = login(tenants[0])
    key = f"{tenants[0].redis_prefix}w"
    loop = ("redis.call('SET', KEYS[1], '1') local t0 = redis.call('TIME')[1] "
            "while redis.call('TIME')[1] - t0 < 2 do end return 1")
    with pytest.raises(redislib.exceptions.NoPermissionError):
        a.eval(loop, 1, key)
    with pytest.raises(redislib.exceptions.NoPermissionError):
        a.execute_command("SCRIPT", "LOAD", "return 1")
    with pytest.raises(redislib.exceptions.NoPermissionError):
        a.execute_command("EVAL_RO", "return 1", 0)
    with pytest.raises(redislib.exceptions.NoPermissionError):
        a.execute_command("FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('f', function() return 1 end)")
    assert admin.get(key) is None  # nothing ran


def test_attack2_one_tenant_cannot_take_redis_past_its_memory_limit(bounded):
    """Issue 23 #2: one MULTI (or script) of SETRANGEs took the server far past `maxmemory`, and
    every other tenant's writes then failed with OOM. A transaction or a single command may
    overshoot only by what one command can allocate (proto-max-bulk-len)."""
    tenants, login, admin, _srv = bounded
    a, b = login(tenants[0]), login(tenants[1])
    maxmemory = int(admin.config_get("maxmemory")["maxmemory"])
    bulk = int(admin.config_get("proto-max-bulk-len")["proto-max-bulk-len"])
    pa = tenants[0].redis_prefix
    try:
        pipe = a.pipeline(transaction=True)
        for i in range(40):  # 40 x 8 MiB: 320 MiB asked in one transaction
            pipe.setrange(f"{pa}big{i}", 8 * 1024 * 1024, "x")
        pipe.execute()
    except redislib.exceptions.RedisError:
        pass  # refused: the point
    assert b.set(f"{tenants[1].redis_prefix}ordinary", "work") is True, "B's write failed"
    used = int(admin.info("memory")["used_memory"])
    assert used <= maxmemory, f"one transaction took the server to {used} bytes, limit {maxmemory}"
    # One command can allocate at most proto-max-bulk-len, which is a small part of maxmemory.
    assert bulk <= maxmemory // 8
    with pytest.raises(redislib.exceptions.ResponseError, match="proto-max-bulk-len"):
        a.setrange(f"{pa}huge", bulk, "x")
    assert b.get(f"{tenants[1].redis_prefix}ordinary") == "work"


def test_attack3_no_user_name_reaches_a_shared_service_key(bounded):
    """Issue 23 #3: tenants got `~<name>:*` in the keyspace where Langfuse and BullMQ write
    `langfuse:*` / `bull:*`, so a user named `bull` could read and forge the queues. Tenant keys now
    live under a prefix no shared service uses, whatever the name."""
    tenants, _login, admin, _srv = bounded
    t = dataclasses.replace(tenants[0], user="bull", redis_user=names.redis_user("bull"),
                            redis_prefix=names.redis_prefix("bull"))
    secrets = DictSecrets()
    rb = RedisBackend(_srv.host, _srv.port, _srv.admin_user, _srv.admin_password, _srv.dir / "archive")
    rb.ensure(t, secrets.for_tenant(t))
    for shared in ("bull:ingestion-queue:1", "langfuse:cache", "bull:x:meta"):
        got = admin.execute_command("ACL", "DRYRUN", t.redis_user, "GET", shared)
        assert got != "OK", f"user `bull` may read {shared}"
    assert admin.execute_command("ACL", "DRYRUN", t.redis_user, "GET", f"{t.redis_prefix}own") == "OK"
    # and such names are refused at validation (exit 2 in `validate` and `users add`)
    from aicommons.spec.identity import name_problem
    assert all(name_problem(n) for n in ("bull", "langfuse", "bullmq", "celery"))


def test_keys_under_the_old_prefixes_move_into_the_users_own_server(tmp_path):
    """Sites from before one server per user kept a user's keys in the shared server, under
    `t:<user>:` or, before that, `<user>:`. `ensure` moves both into the user's own server as
    `t:<user>:` (TTLs kept), leaves another user's keys and a key the own server already has, and
    drops the user's login in the shared server."""
    resolved = resolved_site(2)
    main = start_redis(extra=rendered_limits(resolved))
    secrets = DictSecrets()
    a0, b = resolved.tenants
    own, a = start_redis_user(resolved, a0, secrets.for_tenant(a0)["redis_password"], main.admin_password)
    try:
        shared = RedisBackend(main.host, main.port, main.admin_user, main.admin_password, tmp_path)
        shared.ensure(a, secrets.for_tenant(a))  # as before: the user's login in the shared server
        adm = redislib.Redis(port=main.port, username=main.admin_user, password=main.admin_password)
        adm.set(f"{a.user}:old", "1")
        adm.set(f"{a.redis_prefix}new", "2", ex=600)
        adm.set(f"{a.redis_prefix}both", "shared copy")
        adm.set(f"{b.redis_prefix}other", "3")
        adm.set("langfuse:queue", "4")
        mine = redislib.Redis(port=a.redis_port, username=main.admin_user, password=main.admin_password)
        mine.set(f"{a.redis_prefix}both", "own copy")
        rb = dataclasses.replace(shared, own_servers=True, known={a.user: a.redis_port},
                                 user_memory_mb=resolved.site.redis.user_memory_mb,
                                 user_clients=resolved.site.redis.user_clients, warnings=[])
        rb.ensure(a, secrets.for_tenant(a))
        assert mine.get(f"{a.redis_prefix}old") == b"1" and mine.get(f"{a.redis_prefix}new") == b"2"
        assert 0 < mine.ttl(f"{a.redis_prefix}new") <= 600
        assert mine.get(f"{a.redis_prefix}both") == b"own copy"  # never written over
        assert adm.get(f"{a.redis_prefix}both") == b"shared copy" and "1 keys stay" in rb.warnings[0]
        assert adm.exists(f"{a.user}:old", f"{a.redis_prefix}new") == 0
        assert adm.get(f"{b.redis_prefix}other") == b"3" and adm.get("langfuse:queue") == b"4"
        assert adm.acl_getuser(a.redis_user) is None  # no login left in the shared server
        assert rb.verify(a, secrets.for_tenant(a)) == []
        assert rb.observe() == {a.user: {f"redis.user.{a.redis_user}"}}
        adm.close()
        mine.close()
    finally:
        own.cleanup()
        main.cleanup()


def test_a_users_own_server_is_backed_up_and_restored(tmp_path):
    """`backup run` reads each user's keys and ACL line from its own server, and `backup restore`
    puts them back there (not into the shared server)."""
    from aicommons.ops.backup.postgres import Server
    from aicommons.ops.backup.repo import Repo
    from aicommons.ops.backup.run import Sources, restore_backup, run_backup

    resolved = resolved_site(2)
    main = start_redis()
    secrets = DictSecrets()
    started, tenants = [], []
    for t in resolved.tenants:
        srv, t = start_redis_user(resolved, t, secrets.for_tenant(t)["redis_password"], main.admin_password)
        started.append(srv)
        tenants.append(t)
    resolved = dataclasses.replace(resolved, tenants=tenants)
    try:
        rb = RedisBackend(main.host, main.port, main.admin_user, main.admin_password, tmp_path / "archive",
                          own_servers=True, known={t.user: t.redis_port for t in tenants},
                          user_memory_mb=resolved.site.redis.user_memory_mb,
                          user_clients=resolved.site.redis.user_clients)
        logins = {}
        for t in tenants:
            rb.ensure(t, secrets.for_tenant(t))
            logins[t.user] = redislib.Redis(port=t.redis_port, username=t.redis_user,
                                            password=secrets.for_tenant(t)["redis_password"])
            logins[t.user].set(f"{t.redis_prefix}doc", f"of {t.user}")
        repo = Repo(tmp_path / "backups")
        src = Sources(redis=Server("127.0.0.1", main.port, main.admin_user, main.admin_password))
        m = run_backup(resolved, src, repo)
        keys = {it.name: it.detail.get("keys") for it in m.items if it.kind == "redis_keys"}
        assert keys["user1"] == 1 and keys["user2"] == 1
        a, b = tenants
        logins[a.user].delete(f"{a.redis_prefix}doc")
        logins[b.user].set(f"{b.redis_prefix}doc", "changed since")
        done = restore_backup(resolved, repo, m.id, src, user=a.user)
        assert logins[a.user].get(f"{a.redis_prefix}doc") == b"of user1" and "redis user u_user1" in done
        assert logins[b.user].get(f"{b.redis_prefix}doc") == b"changed since"  # the other user untouched
        with redislib.Redis(port=main.port, username=main.admin_user, password=main.admin_password) as adm:
            assert adm.exists(f"{a.redis_prefix}doc") == 0 and adm.acl_getuser(a.redis_user) is None
        for r in logins.values():
            r.close()
    finally:
        for srv in [main, *started]:
            srv.cleanup()


def test_the_redis_container_holds_the_shared_server_and_every_users_own():
    """#23's left-over: 50 users' own servers (64 MB each) were bounded one by one but not in sum:
    with the shared server's half of a 4096 MB container they could hold ~6.9 GB of it. The plan
    now adds each user's own bound to the container, and the shared server's configuration does
    not move when a user comes or goes (its server keeps running)."""
    from aicommons.render.services import redis_conf, shared_redis_mb

    def redis_of(resolved):
        return next(c for c in resolved.containers if c.name == "redis")

    few, many, shared_only = resolved_site(2), resolved_site(50), resolved_site(50, redis_isolation="acl")
    per_user = many.site.redis.user_server_mb()
    assert per_user >= many.site.redis.user_memory_mb + many.site.redis.user_clients_mb()
    base = redis_of(shared_only).memory_mb  # no servers of the users' own: the catalog's memory alone
    assert redis_of(few).memory_mb == base + 2 * per_user and redis_of(many).memory_mb == base + 50 * per_user
    assert shared_redis_mb(many, redis_of(many)) == shared_redis_mb(few, redis_of(few)) == base
    assert redis_conf(many, redis_of(many)) == redis_conf(few, redis_of(few))
    assert any(f"50 users x {per_user} MB" in n for n in many.notes)

    def mb(conf: str, key: str) -> int:
        return next(int(line.split()[1].removesuffix("mb")) for line in conf.splitlines() if line.split()[0] == key)

    # every bound the servers are given fits in the container, all users at theirs at once
    shared = redis_conf(many, redis_of(many))
    users = 50 * (many.site.redis.user_memory_mb + many.site.redis.user_clients_mb())
    assert mb(shared, "maxmemory") + mb(shared, "maxmemory-clients") + users <= redis_of(many).memory_mb
