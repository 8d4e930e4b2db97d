"""Shared fixtures. `pg` and `redis_server` are the real Debian servers on loopback (Redis with the
rendered redis.conf limits)."""

from __future__ import annotations

import pytest

from tests.servers import redis_limits, start_postgres, start_redis


@pytest.fixture(scope="session")
def pg():
    srv = start_postgres()
    yield srv
    srv.cleanup()


@pytest.fixture(scope="session")
def redis_server():
    from tests.standins.helpers import resolved_site

    srv = start_redis(extra=redis_limits(resolved_site(3), memory_mb=512))  # as the site runs it
    yield srv
    srv.cleanup()


@pytest.fixture
def seed_site_text():
    from aicommons.spec.default import render_site_yaml

    return render_site_yaml(users=50)
