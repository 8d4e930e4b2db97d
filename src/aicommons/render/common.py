"""Helpers every renderer shares: YAML dumping, shared-service addresses, secret-derived values."""

from __future__ import annotations

import hashlib

import yaml

from aicommons.catalog import load_catalog
from aicommons.plan.model import ResolvedSite


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # libyaml: ~10x faster
    def ignore_aliases(self, data):  # no &id001 anchors: every file reads plainly
        return True


def _str(dumper: yaml.SafeDumper, data: str):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data, header: str = "") -> str:
    """Block-style YAML in insertion order; safe_dump semantics (no Python objects)."""
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120,
                     allow_unicode=True)
    return (header + text) if header else text


def hex_key(secret: str, bytes_: int = 32) -> str:
    """A fixed-length hex key derived from a stored secret (Garage rpc_secret, Langfuse ENCRYPTION_KEY)."""
    return hashlib.sha256(secret.encode()).hexdigest()[: bytes_ * 2]


def endpoint_url(resolved: ResolvedSite, service: str, port_name: str | None = None, scheme: str = "http") -> str | None:
    """`http://ip:port` of a shared service (its first instance), or None when not enabled."""
    ep = resolved.endpoints.get(service)
    if ep is None:
        return None
    ports = ep.ports
    if not ports:
        return None
    port = ports.get(port_name) if port_name else next(iter(ports.values()))
    if port is None:
        port = next(iter(ports.values()))
    return f"{scheme}://{ep.host}:{port}"


def endpoint_host(resolved: ResolvedSite, service: str) -> str | None:
    ep = resolved.endpoints.get(service)
    return ep.host if ep else None


def port_of(resolved: ResolvedSite, service: str, port_name: str | None = None) -> int | None:
    ep = resolved.endpoints.get(service)
    if ep is None or not ep.ports:
        return None
    return ep.ports.get(port_name) if port_name else next(iter(ep.ports.values()))


def catalog():
    return load_catalog()


def svc_dir(host: str) -> str:
    """Where a shared container's files go in the output tree."""
    return f"services/{host}"


def db_ident(service: str) -> str:
    """A shared service's own PostgreSQL role/database (langfuse, authentik, ...)."""
    return service.replace("-", "_")
