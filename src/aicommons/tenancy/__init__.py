"""Tenant isolation in the shared back ends: one module per back end."""

from aicommons.tenancy.base import AuditCheck, Secrets, TenantBackend

__all__ = ["AuditCheck", "Secrets", "TenantBackend"]
