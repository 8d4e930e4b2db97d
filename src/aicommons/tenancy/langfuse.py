"""Langfuse tenancy.

The open-source edition has no project API (those endpoints answer 403 without the enterprise
entitlement), so every user shares the site's one project and apps tag traces with the user:
`app_config` returns what an app needs. With an organization API key of an enterprise instance
(`AICOMMONS_LANGFUSE_ORG_KEY=public:secret`), each user gets a project of their own, made and
removed over `/api/public/projects` with HTTP basic auth.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.model import Tenant
from aicommons.tenancy.base import AuditCheck, Secrets

ORG_KEY_ENV = "AICOMMONS_LANGFUSE_ORG_KEY"


def project_name(t: Tenant) -> str:
    return f"aicommons-{t.user}"


@dataclass
class LangfuseBackend:
    url: str
    public_key: str
    secret_key: str
    org_key: tuple[str, str] | None = None  # enterprise: per-user projects
    transport: httpx.BaseTransport | None = None
    name: str = "langfuse"

    @classmethod
    def for_site(cls, resolved, secrets, base_dir) -> LangfuseBackend:
        from aicommons.plan.secrets import SITE_SCOPE

        ep = resolved.endpoints["langfuse"]
        org = os.environ.get(ORG_KEY_ENV)
        org_key: tuple[str, str] | None = None
        if org and ":" in org:
            public, secret = org.split(":", 1)
            org_key = (public, secret)
        return cls(f"http://{ep.host}:{next(iter(ep.ports.values()))}", secrets(SITE_SCOPE, "langfuse_public_key"),
                   secrets(SITE_SCOPE, "langfuse_secret_key"), org_key)

    @property
    def per_user_projects(self) -> bool:
        return self.org_key is not None

    def app_config(self, t: Tenant) -> dict[str, object]:
        """What a user's apps send: the shared project's keys (OSS) and the user's trace tag."""
        return {"LANGFUSE_HOST": self.url, "LANGFUSE_PUBLIC_KEY": self.public_key,
                "LANGFUSE_SECRET_KEY": self.secret_key, "user_id": t.user, "tags": [f"user:{t.user}"],
                "project": project_name(t) if self.per_user_projects else "shared"}

    def _http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=self.org_key, timeout=10, transport=self.transport)

    def _req(self, method: str, path: str, **kw):
        try:
            with self._http() as c:
                r = c.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise TemporaryError(f"Langfuse at {self.url} is not reachable: {exc}", delay=2.0) from None
        if r.status_code in (401, 403):
            raise PermanentError(f"Langfuse refused the organization key ({r.status_code}): per-user projects need "
                                 f"the enterprise edition; unset {ORG_KEY_ENV} to use one shared project")
        if r.status_code >= 400:
            raise TemporaryError(f"Langfuse {path} failed: {r.status_code} {r.text[:200]}", delay=2.0)
        return r.json() if r.content else None

    def _projects(self) -> dict[str, str]:
        data = self._req("GET", "/api/public/projects") or {}
        return {p["name"]: p["id"] for p in data.get("data", [])}

    def observe(self) -> dict[str, set[str]]:
        if not self.per_user_projects:
            return {}
        return {n.removeprefix("aicommons-"): {f"langfuse.project.{n}"} for n in self._projects()
                if n.startswith("aicommons-")}

    def ensure(self, t: Tenant, secrets: Secrets) -> None:
        if self.per_user_projects and project_name(t) not in self._projects():
            self._req("POST", "/api/public/projects", json={"name": project_name(t), "retention": 0})

    def verify(self, t: Tenant, secrets: Secrets) -> list[str]:
        if self.per_user_projects and project_name(t) not in self._projects():
            return [f"Langfuse project {project_name(t)} is missing"]
        return []

    def remove(self, t: Tenant, *, purge: bool = False) -> None:
        # Traces are not archived here: Langfuse's own export covers them (see docs/security.md).
        if self.per_user_projects:
            pid = self._projects().get(project_name(t))
            if pid:
                self._req("DELETE", f"/api/public/projects/{pid}")

    def suspend(self, t: Tenant) -> None:
        """Nothing per user to revoke: the app keys live in the user's container, which is stopped."""

    def resume(self, t: Tenant, secrets: Secrets) -> None:
        self.ensure(t, secrets)

    def audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        """OSS: one shared project is by design (tagging, not isolation); reported, not a leak."""
        if not self.per_user_projects:
            return []
        have = self._projects()
        return [AuditCheck(self.name, t.user, t.user, f"project {project_name(t)}", "allow",
                           "allow" if project_name(t) in have else "error") for t in tenants]
