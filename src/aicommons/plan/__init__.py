"""Allocation and the resolved site (pure: no I/O)."""

from aicommons.plan.model import Container, Endpoint, ResolvedSite, Route, Tenant, Totals
from aicommons.plan.resolve import check, enabled_services, resolve

__all__ = ["Container", "Endpoint", "ResolvedSite", "Route", "Tenant", "Totals", "check", "enabled_services", "resolve"]
