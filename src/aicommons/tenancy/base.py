"""The tenancy back-end protocol: one implementation per shared back end.

`ensure` is idempotent create/update; `verify` reads back; `remove` archives first unless
purging; `audit` tries to cross the boundary with each user's own credentials. Secrets come in
as a mapping of key -> value (keys from `aicommons.plan.secrets`), never from globals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from aicommons.plan.model import Tenant

Secrets = Mapping[str, str]
Expected = Literal["allow", "deny"]
Observed = Literal["allow", "deny", "error"]


@dataclass(frozen=True)
class AuditCheck:
    backend: str          # postgres / redis / qdrant / s3
    actor: str            # user whose credentials were used
    target: str           # user whose data was tried
    resource: str         # e.g. database openwebui_user2, key user2:*, bucket user2-openwebui
    expected: Expected
    observed: Observed
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.expected == self.observed


@runtime_checkable
class TenantBackend(Protocol):
    name: str

    def observe(self) -> dict[str, set[str]]:
        """Per user, the resource addresses that exist now (e.g. {"user1": {"postgres.database.openwebui_user1"}})."""

    def ensure(self, tenant: Tenant, secrets: Secrets) -> None: ...

    def verify(self, tenant: Tenant, secrets: Secrets) -> list[str]:
        """Problems found reading the tenant back (empty = as planned)."""

    def remove(self, tenant: Tenant, *, purge: bool = False) -> None: ...

    def suspend(self, tenant: Tenant) -> None: ...

    def resume(self, tenant: Tenant, secrets: Secrets) -> None: ...

    def audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]: ...
