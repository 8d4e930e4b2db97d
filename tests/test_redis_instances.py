"""One Redis server per user (redis.isolation=instance), as rendered: pure, no server.

Real: the render and plan code; the script's shell is parsed and linted in
tests/test_rendered_scripts.py and the servers run in tests/test_abuse.py. Nothing is simulated.
"""

from __future__ import annotations

import pytest

from aicommons.engine.services import apply_script
from aicommons.plan import names
from aicommons.render import render_site
from aicommons.render.firewall import firewall_plan
from tests.standins.helpers import DictSecrets, resolved_site


def redis_files(resolved, secrets) -> dict[str, str]:
    host = next(c.hostname for c in resolved.containers if c.name == "redis")
    prefix = f"services/{host}/"
    return {p[len(prefix):]: f.content for p, f in render_site(resolved, secrets).items() if p.startswith(prefix)}


def test_each_user_has_its_own_port_bounds_and_login():
    resolved = resolved_site(3)
    ports = {t.user: t.redis_port for t in resolved.tenants}
    assert ports == {t.user: names.REDIS_USER_PORT_BASE + t.ctid for t in resolved.tenants}
    files = redis_files(resolved, DictSecrets())
    script, acl = files["redis-users.sh"], files["users.acl"]
    for t in resolved.tenants:
        assert f"port {t.redis_port}\n" in script and f"systemctl restart redis-user@{t.user}" in script
        assert f"user {t.redis_user} " not in acl  # no login in the shared server
    assert "maxmemory 64mb\n" in script and "maxclients 64\n" in script
    assert "ExecStart=/usr/bin/redis-server /etc/redis/users/%i.conf" in files["redis-user@.service"]


def test_adding_or_removing_a_user_reloads_without_restarting_the_shared_server():
    secrets = DictSecrets()
    two, three = redis_files(resolved_site(2), secrets), redis_files(resolved_site(3), secrets)
    changed = {rel for rel in three if three[rel] != two.get(rel)}
    assert changed == {"redis-users.sh"}
    script = apply_script("redis", "/opt/aicommons/redis", changed)
    assert script is not None and "sh /etc/redis/aicommons-users.sh" in script
    assert "restart redis-server" not in script


def test_apps_get_the_users_own_server_and_only_that_user_may_reach_it():
    resolved = resolved_site(2)
    a, b = resolved.tenants
    from aicommons.render.compose import _redis_url

    url = _redis_url(resolved, a, "pw")
    assert url is not None and url.endswith(f":{a.redis_port}/0"), url
    fw = next(f for f in firewall_plan(resolved).containers if f.ctid == next(
        c.ctid for c in resolved.containers if c.name == "redis"))
    own = [(r.source, r.dport) for r in fw.rules if r.comment.startswith("own Redis of")]
    assert own == [(a.ip, str(a.redis_port)), (b.ip, str(b.redis_port))]


def test_a_user_whose_port_would_pass_65535_is_refused_by_validate():
    """CTIDs outside the primary /24 are third octet * 1000 + last octet: from 10.0.50.x on,
    16000 + CTID is no port. `validate` names the user and the fix, and `acl` needs no port."""
    from aicommons.errors import SiteInvalid
    from tests.test_traefik_harness import make_site

    def tweak(isolation):
        def fn(d):
            d["network"]["user_ranges"] = ["10.0.5.200-10.0.5.200", "10.0.50.2-10.0.50.9"]
            d["redis"]["isolation"] = isolation
        return fn

    with pytest.raises(SiteInvalid) as exc:
        make_site(2, tweak("instance"))
    text = str(exc.value) + " ".join(str(p) for p in getattr(exc.value, "problems", []))
    assert "user2's own Redis" in text and "65535" in text, text
    assert make_site(2, tweak("acl")).tenants[1].redis_port is None
