"""Shared helpers for the tenancy tests: tenants from a real resolved site, dict-backed secrets."""

from __future__ import annotations

import secrets as pysecrets

from aicommons.plan import resolve
from aicommons.plan.secrets import tenant_keys
from aicommons.spec.default import render_site_yaml
from aicommons.spec.load import load_text


def resolved_site(users: int = 3, driver: str = "lxc", redis_isolation: str = "instance"):
    site, _ = load_text(render_site_yaml(users=users, driver=driver, redis_isolation=redis_isolation,
                                         services=["ollama", "qdrant", "postgres", "redis", "garage", "searxng",
                                                   "langfuse"]))
    return resolve(site)


class DictSecrets:
    """A SecretLookup: generate-once values kept in a dict (the state store does this for real)."""

    def __init__(self):
        self.values: dict[tuple[str, str], str] = {}

    def __call__(self, scope: str, key: str) -> str:
        return self.values.setdefault((scope, key), pysecrets.token_urlsafe(32))

    get = __call__

    def for_tenant(self, t) -> dict[str, str]:
        return {k: self(t.user, k) for k in tenant_keys(t)}

    def by_user(self, tenants) -> dict[str, dict[str, str]]:
        return {t.user: self.for_tenant(t) for t in tenants}
