"""Rendered files agree with what tenancy provisions: the S3 keys in users' .env are the keys the
object store holds, and the rendered Redis aclfile gives each tenant the very rules tenancy's
`ACL SETUSER` gives it.

Real: Redis 7 (the `redis_server` fixture, where tenancy's RedisBackend.ensure creates users, and a
second redis-server started from the rendered aclfile); `ACL GETUSER` on both. Simulated: Garage's
admin API (tests/standins/garage.py), which records the keys tenancy imports.
"""

from __future__ import annotations

import subprocess

import pytest
import redis as redislib

from aicommons.render import render_site
from aicommons.render.envfile import parse_env
from aicommons.tenancy.objectstore import GarageAdmin, ObjectStoreBackend
from aicommons.tenancy.redis import RedisBackend
from tests.servers import _wait_port, free_port
from tests.standins.garage import GarageStandin
from tests.standins.helpers import DictSecrets, resolved_site

TOKEN = "garage-admin-token"


@pytest.fixture(scope="module")
def rendered():
    # a driver that deploys the object store; one shared Redis (isolation=acl): its users.acl
    # holds the tenants (their own servers' ACL files: tests/test_redis_instances.py)
    site = resolved_site(3, driver="proxmox", redis_isolation="acl")
    secrets = DictSecrets()
    return site, secrets, render_site(site, secrets)


def test_env_s3_keys_are_the_keys_tenancy_imports(rendered, tmp_path):
    site, secrets, files = rendered
    garage = GarageStandin(TOKEN)
    try:
        b = ObjectStoreBackend(GarageAdmin(garage.url, TOKEN), "http://127.0.0.1:1", ("GKx", "y"), tmp_path)
        for t in site.tenants:
            b.ensure(t, secrets.for_tenant(t))
        imported = {k: v["secret"] for k, v in garage.state.keys.items()}
    finally:
        garage.stop()
    assert len(imported) == len(site.tenants)
    for t in site.tenants:
        env = parse_env(files[f"users/{t.user}/.env"].content)
        assert imported.get(env["S3_ACCESS_KEY"]) == env["S3_SECRET_KEY"], t.user
        # The raw stored secrets are not what the apps get (the store would refuse them).
        assert env["S3_ACCESS_KEY"] != secrets(t.user, "s3_access_key")
        compose = files[f"users/{t.user}/docker-compose.yml"].content
        for var in ("S3_ACCESS_KEY_ID", "S3_STORAGE_ACCESS_KEY_ID"):
            assert f"{var}: ${{S3_ACCESS_KEY}}" in compose, (t.user, var)
        for var in ("S3_SECRET_ACCESS_KEY", "S3_STORAGE_SECRET_ACCESS_KEY"):
            assert f"{var}: ${{S3_SECRET_KEY}}" in compose, (t.user, var)


DRYRUNS = [("PUBSUB", "CHANNELS"), ("DBSIZE",), ("FUNCTION", "FLUSH"), ("SCRIPT", "FLUSH"), ("SCRIPT", "LOAD", "x"),
           ("KEYS", "*"), ("SELECT", "1"), ("SELECT", "0"), ("FLUSHALL",), ("GET", "other:k")]


def _getuser(r: redislib.Redis, user: str) -> dict:
    """ACL GETUSER with rule lists sorted: Redis lists a user's commands in hash-table order."""
    info = r.acl_getuser(user)
    assert info is not None, user
    return {k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v
            for k, v in info.items()}


def _dry(r: redislib.Redis, t, cmd: tuple[str, ...]) -> str:
    try:
        return str(r.execute_command("ACL", "DRYRUN", t.redis_user, *cmd))
    except redislib.ResponseError as exc:
        return str(exc)


def test_rendered_aclfile_gives_each_tenant_the_rules_tenancy_applies(rendered, redis_server, tmp_path):
    site, secrets, files = rendered
    rb = RedisBackend(redis_server.host, redis_server.port, redis_server.admin_user,
                      redis_server.admin_password, tmp_path / "archive")
    acl = tmp_path / "users.acl"
    acl.write_text(files["services/redis/users.acl"].content)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--aclfile", str(acl), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        for t in site.tenants:
            rb.ensure(t, secrets.for_tenant(t))
        with redislib.Redis(port=port, username="admin", password=secrets("site", "redis_admin_password"),
                            decode_responses=True) as from_file, \
                redislib.Redis(port=redis_server.port, username=redis_server.admin_user,
                               password=redis_server.admin_password, decode_responses=True) as live:
            for t in site.tenants:
                want = _getuser(live, t.redis_user)
                assert "-pubsub" in str(want["commands"]) and "-dbsize" in str(want["commands"])
                assert _getuser(from_file, t.redis_user) == want, t.user
                for cmd in DRYRUNS:  # and the same answers, command by command
                    assert _dry(from_file, t, cmd) == _dry(live, t, cmd), (t.user, cmd)
    finally:
        proc.terminate()
        proc.wait(10)
        for t in site.tenants:
            rb.remove(t, purge=True)
