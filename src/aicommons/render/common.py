"""Helpers every renderer shares: YAML dumping, shared-service addresses, secret-derived values."""

from __future__ import annotations

import hashlib

import yaml

from aicommons.catalog import load_catalog
from aicommons.plan.model import ResolvedSite

_TAG = "tag:yaml.org,2002:"
_RESOLVED: dict = {}  # (dumper class, value, implicit) -> tag; stays in this process


class FastDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # libyaml emits
    """SafeDumper output, cheaper: plain dicts/lists/scalars become nodes directly and scalar tag
    resolution is memoized (PyYAML's generic representer and resolver were most of render's time).
    Containers never get anchors; anything else goes through the usual safe representers."""

    literal_block = False  # multi-line strings as `|` blocks

    def represent_data(self, data):
        t = type(data)
        if t is str:
            return yaml.ScalarNode(_TAG + "str", data, style="|" if self.literal_block and "\n" in data else None)
        if self.default_flow_style is not False or self.sort_keys:
            return super().represent_data(data)
        if t is dict:
            rd = self.represent_data
            return yaml.MappingNode(_TAG + "map", [(rd(k), rd(v)) for k, v in data.items()], flow_style=False)
        if t is list:
            return yaml.SequenceNode(_TAG + "seq", [self.represent_data(x) for x in data], flow_style=False)
        if t is bool:
            return yaml.ScalarNode(_TAG + "bool", "true" if data else "false")
        if t is int:
            return yaml.ScalarNode(_TAG + "int", str(data))
        if data is None:
            return yaml.ScalarNode(_TAG + "null", "null")
        return super().represent_data(data)

    def resolve(self, kind, value, implicit):
        if kind is not yaml.ScalarNode:
            return super().resolve(kind, value, implicit)
        key = (type(self), value, implicit)
        tag = _RESOLVED.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(_RESOLVED) > 200_000:  # bounded: a long-lived process renders many sites
                _RESOLVED.clear()
            _RESOLVED[key] = tag
        return tag


class _Dumper(FastDumper):
    literal_block = True

    def ignore_aliases(self, data):  # no &id001 anchors: every file reads plainly
        return True


_DUMPED: dict = {}  # (dumper, options, repr(document)) -> text


def memo_dump(data, dumper: type, **options) -> str:
    """yaml.dump remembered by the document's repr: every plan renders the whole site, and an
    unchanged document then costs a repr (C speed) instead of an emit. repr tells 1 from '1' and
    True from 1, so equal keys mean equal documents."""
    key = (dumper, tuple(sorted(options.items())), repr(data))
    text = _DUMPED.get(key)
    if text is None:
        text = yaml.dump(data, Dumper=dumper, **options)
        if len(_DUMPED) >= 4096:  # bounded: a few sites' worth of files
            _DUMPED.clear()
        _DUMPED[key] = text
    return text


def dump_yaml(data, header: str = "") -> str:
    """Block-style YAML in insertion order; safe_dump semantics (no Python objects)."""
    text = memo_dump(data, _Dumper, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)
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


def reachable(resolved: ResolvedSite, service: str) -> bool:
    """Enabled and really running: a service the driver does not deploy gets the app's fallback
    (plan/deployed.py), never an address where nothing listens."""
    return service in resolved.endpoints and service not in resolved.undeployed


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
