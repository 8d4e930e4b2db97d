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
    section: str = "data"  # "data": another user's data; "service": a bound on what one user can take

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


@runtime_checkable
class ServiceBounded(Protocol):
    """A back end whose bounds on one tenant (time, memory, connections) the audit can prove live:
    each check is safe on a running site and short (refused at once, or harmless if it ran)."""

    def service_audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]: ...
