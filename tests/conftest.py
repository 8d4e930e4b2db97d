"""Shared fixtures. `pg` and `redis_server` are the real Debian servers on loopback."""

from __future__ import annotations

import pytest

from tests.servers import start_postgres, start_redis


@pytest.fixture(scope="session")
def pg():
    srv = start_postgres()
    yield srv
    srv.cleanup()


@pytest.fixture(scope="session")
def redis_server():
    srv = start_redis()
    yield srv
    srv.cleanup()


@pytest.fixture
def seed_site_text():
    from aicommons.spec.default import render_site_yaml

    return render_site_yaml(users=50)
