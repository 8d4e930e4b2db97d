"""Ollama model pulls and Langfuse projects. SIMULATED: Ollama and Langfuse (loopback stand-ins
in tests/standins/http.py following their documented APIs). REAL: the HTTP clients and requests.
"""

from __future__ import annotations

import pytest

from aicommons.errors import PermanentError
from aicommons.tenancy.langfuse import LangfuseBackend
from aicommons.tenancy.ollama import list_models, pull_models
from tests.standins import http
from tests.standins.helpers import resolved_site


def test_pull_models_once_and_report_failures():
    pulls: list[dict] = []
    srv = http.ollama(["llama3.2:latest"], pulls, missing={"nope"})
    try:
        res = pull_models(srv.url, ["llama3.2", "qwen2.5:7b", "nope"])
        assert [(r.model, r.status.split(":")[0]) for r in res] == [
            ("llama3.2", "present"), ("qwen2.5:7b", "pulled"), ("nope", "failed")]
        assert pulls[0] == {"model": "qwen2.5:7b", "stream": False}
        assert "qwen2.5:7b" in list_models(srv.url)
        assert [r.status for r in pull_models(srv.url, ["qwen2.5:7b"])] == ["present"]  # once
        assert len(pulls) == 2
    finally:
        srv.stop()


def test_langfuse_oss_shares_one_project_and_tags_by_user():
    t = resolved_site(1).tenants[0]
    b = LangfuseBackend("http://127.0.0.1:1", "pk-lf-x", "sk-lf-y")
    b.ensure(t, {})  # no network needed on OSS
    cfg = b.app_config(t)
    assert cfg["tags"] == ["user:user1"] and cfg["user_id"] == "user1" and cfg["project"] == "shared"
    assert b.audit([t], {}) == [] and b.observe() == {}


def test_langfuse_enterprise_makes_per_user_projects():
    projects: dict[str, str] = {}
    key = ("pk-org", "sk-org")
    srv = http.langfuse(key, projects)
    try:
        tenants = resolved_site(2).tenants
        b = LangfuseBackend(srv.url, "pk", "sk", org_key=key)
        for t in tenants:
            b.ensure(t, {})
            b.ensure(t, {})
        assert sorted(projects) == ["aicommons-user1", "aicommons-user2"]
        assert all(c.ok for c in b.audit(tenants, {}))
        b.remove(tenants[0])
        assert sorted(projects) == ["aicommons-user2"]
        with pytest.raises(PermanentError, match="enterprise"):
            LangfuseBackend(srv.url, "pk", "sk", org_key=("bad", "key")).ensure(tenants[0], {})
    finally:
        srv.stop()
