"""Which back ends a site gets and where their admin credentials come from. Pure: nothing is
contacted (back ends connect lazily), no server is simulated."""

from __future__ import annotations

import pytest

from aicommons.errors import SiteInvalid
from aicommons.plan import resolve
from aicommons.spec.load import load_text
from aicommons.tenancy.registry import backends_for
from tests.standins.helpers import DictSecrets, resolved_site


def test_site_made_servers_use_site_secrets(tmp_path):
    r = resolved_site(2)
    s = DictSecrets()
    bs = {b.name: b for b in backends_for(r, s, tmp_path)}
    assert sorted(bs) == ["langfuse", "postgres", "qdrant", "redis", "s3"]
    assert (bs["postgres"].host, bs["postgres"].port) == ("10.0.5.102", 5432)
    assert bs["postgres"].admin_password == s("site", "postgres_admin_password")
    assert bs["redis"].admin_user == "admin" and bs["redis"].admin_password == s("site", "redis_admin_password")
    assert bs["qdrant"].api_key == s("site", "qdrant_api_key")
    assert str(bs["postgres"].archive_dir) == "/var/backups/aicommons/removed"


def _external_site(extra: str) -> str:
    return f"""version: 1
name: ext
domain: example.org
driver: {{kind: lxc}}
services:
  ollama: {{}}
  postgres:
    external: {{host: db.example.org, port: 6543, admin_user: boss{extra}}}
user_template: {{apps: [n8n]}}
backups: {{dir: bk}}
users: [{{name: alice, email: alice@example.org}}]
"""


def test_external_servers_use_site_yaml_refs(tmp_path, monkeypatch):
    monkeypatch.setenv("AIC_EXT_PG", "from-env")
    site, _ = load_text(_external_site(', admin_password: "env:AIC_EXT_PG"'))
    (pgb,) = backends_for(resolve(site), DictSecrets(), tmp_path)
    assert (pgb.host, pgb.port, pgb.admin_user, pgb.admin_password) == ("db.example.org", 6543, "boss", "from-env")
    assert pgb.archive_dir == tmp_path / "bk" / "removed"
    site, _ = load_text(_external_site(""))  # without the login its tenancy needs: invalid (issue 23)
    with pytest.raises(SiteInvalid, match="services.postgres.external.admin_password"):
        resolve(site)
    monkeypatch.delenv("AIC_EXT_PG")
    site, _ = load_text(_external_site(', admin_password: "env:AIC_EXT_PG"'))
    with pytest.raises(SiteInvalid, match="AIC_EXT_PG is not set"):
        backends_for(resolve(site), DictSecrets(), tmp_path)


def test_redis_db_isolation_is_warned_and_still_confined(tmp_path):
    from aicommons.plan.policy import acl_rules

    site, _ = load_text("""version: 1
name: legacy
domain: example.org
driver: {kind: lxc}
services: {ollama: {}, postgres: {}, redis: {}}
user_template: {apps: [n8n]}
redis: {isolation: db}
users: [{name: alice, email: alice@example.org}]
""")
    r = resolve(site)
    rb = next(b for b in backends_for(r, DictSecrets(), tmp_path) if b.name == "redis")
    assert rb.warnings and "isolate nothing" in rb.warnings[0]
    t = r.tenants[0]
    rules = acl_rules(t, "pw")
    assert t.redis_db == 2 and "+select|2" in rules and "~t:alice:*" in rules and "-@dangerous" in rules
