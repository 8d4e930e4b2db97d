"""Check a request against Proxmox VE's published API schema (pve-docs apidoc, 9.1.3).

The schema is a tree: each node has `path`, `children` and `info` = {METHOD: {parameters:
{properties: {name: {type, format, enum, pattern, optional, minimum, maximum, ...}}}}}.
Indexed parameters are written `net[n]`, `dev[n]` (we accept `net0`, `net1`, ...).
Errors come back as PVE shapes them: {param: message}.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import re
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "pve-api-schema-9.1.3.json.gz"

BOOL_RE = re.compile(r"^(1|0|true|false|yes|no|on|off)$", re.I)
INT_RE = re.compile(r"^[+-]?\d+$")
NUM_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
CONFIGID_RE = re.compile(r"^[a-z][a-z_]*\d*$", re.I)
TAG_RE = re.compile(r"^[a-z0-9_][a-z0-9_\-+.]*$", re.I)
NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")
DNS_RE = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)*$")
STORAGE_RE = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]$", re.I)
STARTUP_RE = re.compile(r"^(order=)?\d+(,up=\d+)?(,down=\d+)?$|^(up=\d+)(,down=\d+)?$")
PORTSPEC_RE = re.compile(r"^[\w\-]+(:[\w\-]+)?(,[\w\-]+(:[\w\-]+)?)*$")


def _perl_re(pattern: str) -> re.Pattern:
    # Perl's `(?^:...)` (default flags group) is Python's `(?:...)`.
    return re.compile(pattern.replace("(?^:", "(?:"))


def _ip(v: str, cidr: bool = False, v4: bool = False) -> bool:
    try:
        if cidr and "/" in v:
            net = ipaddress.ip_interface(v)
        else:
            net = ipaddress.ip_address(v)
    except ValueError:
        return False
    return not v4 or net.version == 4


def _check_format(fmt: str, value: str) -> str | None:
    ok: bool | None = None
    if fmt == "pve-vmid":
        ok = INT_RE.match(value) is not None and 100 <= int(value) <= 999999999
    elif fmt in ("pve-node", "pve-poolid"):
        ok = NODE_RE.match(value) is not None if fmt == "pve-node" else re.match(r"^[A-Za-z0-9\-_]+$", value) is not None
    elif fmt == "pve-storage-id":
        ok = STORAGE_RE.match(value) is not None
    elif fmt == "pve-configid":
        ok = CONFIGID_RE.match(value) is not None
    elif fmt == "pve-configid-list":
        ok = all(CONFIGID_RE.match(x) for x in re.split(r"[,;\s]+", value) if x)
    elif fmt == "dns-name":
        ok = DNS_RE.match(value) is not None
    elif fmt in ("ipv4", "ipv6", "ip"):
        ok = _ip(value, v4=fmt == "ipv4")
    elif fmt in ("CIDR", "IPorCIDR", "CIDRv4"):
        ok = _ip(value, cidr=True, v4=fmt == "CIDRv4")
    elif fmt == "IPorCIDRorAlias":
        ok = _ip(value, cidr=True) or re.match(r"^(dc/|guest/)?[A-Za-z][A-Za-z0-9\-_]+$", value) is not None
    elif fmt == "pve-ipv4-config":
        ok = value in ("dhcp", "manual") or ("/" in value and _ip(value, cidr=True, v4=True))
    elif fmt == "pve-tag-list":
        ok = all(TAG_RE.match(t) for t in re.split(r"[;, ]+", value) if t)
    elif fmt == "pve-startup-order":
        ok = STARTUP_RE.match(value) is not None
    elif fmt in ("pve-fw-dport-spec", "pve-fw-sport-spec"):
        ok = PORTSPEC_RE.match(value) is not None
        # pve-firewall PVE/Firewall.pm parse_port_name_number_or_range: a number counts 1, a range
        # a:b counts 2 (iptables multiport's limit), more than 15 dies.
        if ok and sum(2 if ":" in p else 1 for p in value.split(",")) > 15:
            return "too many entries in port list (> 15 numbers)"
    elif fmt == "pve-fw-protocol-spec":
        ok = re.match(r"^(\d+|[a-z][a-z0-9\-]*)$", value, re.I) is not None
    elif fmt == "pve-fw-addr-spec":
        parts = value.split(",")
        ok = all(_ip(p, cidr=True) or re.match(r"^\+?(dc/|guest/)?[A-Za-z][A-Za-z0-9\-_]+$", p) for p in parts)
    elif fmt == "mac-addr":
        ok = re.match(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", value, re.I) is not None
    if ok is False:
        if fmt.startswith("pve-"):
            return "value does not match the regex pattern"
        return f"invalid format - value '{value}' is not a valid {fmt}"
    return None  # formats we do not model are accepted


def _split_propstring(text: str) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    for item in text.split(","):
        if item == "":
            continue
        if "=" in item:
            k, v = item.split("=", 1)
            out.append((k, v))
        else:
            out.append((None, item))
    return out


def check_value(spec: dict, value: str) -> str | None:
    """Return a PVE-style error message for one parameter value, or None when it is valid."""
    t = spec.get("type", "string")
    if t == "boolean":
        return None if BOOL_RE.match(value) else f"type check ('boolean') failed - got '{value}'"
    if t in ("integer", "number"):
        rx = INT_RE if t == "integer" else NUM_RE
        if not rx.match(value):
            return f"type check ('{t}') failed - got '{value}'"
        n = float(value)
        if "minimum" in spec and n < float(spec["minimum"]):
            return f"value must have a minimum value of {spec['minimum']}"
        if "maximum" in spec and n > float(spec["maximum"]):
            return f"value must have a maximum value of {spec['maximum']}"
        return None
    if t == "array":
        return None
    # string
    if "enum" in spec and value not in spec["enum"]:
        return f"value '{value}' does not have a value in the enumeration '{', '.join(spec['enum'])}'"
    if "maxLength" in spec and len(value) > int(spec["maxLength"]):
        return f"value may only be {spec['maxLength']} characters long"
    if "minLength" in spec and len(value) < int(spec["minLength"]):
        return f"value must be at least {spec['minLength']} characters long"
    if "pattern" in spec and not _perl_re(spec["pattern"]).fullmatch(value):
        return "value does not match the regex pattern"
    fmt = spec.get("format")
    if isinstance(fmt, dict):
        return _check_propstring(fmt, value)
    if isinstance(fmt, str):
        return _check_format(fmt, value)
    return None


def _check_propstring(fmt: dict, value: str) -> str | None:
    default_key = next((k for k, v in fmt.items() if v.get("default_key")), None)
    seen = set()
    for key, val in _split_propstring(value):
        if key is None:
            if default_key is None or default_key in seen:
                return "format error - value without key, but schema does not define a default key"
            key = default_key
        sub = fmt.get(key)
        if sub is None:
            alias = next((k for k, v in fmt.items() if v.get("alias") == key), None)
            if alias is None:
                return f"format error - {key}: property is not defined in schema and the schema does not allow additional properties"
            sub = fmt[alias]
        if key in seen:
            return f"format error - duplicate key in comma-separated list property: {key}"
        seen.add(key)
        msg = check_value(sub, val)
        if msg:
            return f"format error - {key}: {msg}"
    for key, sub in fmt.items():
        if not sub.get("optional") and key not in seen and not sub.get("alias"):
            return f"format error - {key}: property is missing and it is not optional"
    return None


@dataclass(frozen=True)
class Endpoint:
    path: str  # schema path, e.g. /nodes/{node}/lxc/{vmid}/config
    method: str
    info: dict

    @property
    def properties(self) -> dict:
        return (self.info.get("parameters") or {}).get("properties") or {}

    @property
    def allow_token(self) -> bool:
        return bool(self.info.get("allowtoken", 1))


class ApiSchema:
    def __init__(self, tree: list[dict]):
        self.root = {"path": "", "children": tree}

    @classmethod
    @lru_cache(maxsize=1)
    def load(cls, path: str | None = None) -> ApiSchema:
        with gzip.open(path or SCHEMA_FILE) as fh:
            return cls(json.load(fh))

    def match(self, path: str) -> tuple[dict, dict[str, str]] | None:
        """Walk the tree segment by segment: literal children win over `{param}` ones."""
        node, params = self.root, {}
        for raw in [s for s in path.strip("/").split("/") if s]:
            seg = urllib.parse.unquote(raw)
            children = node.get("children") or []
            prefix = node["path"]
            nxt = next((c for c in children if c["path"] == f"{prefix}/{seg}"), None)
            if nxt is None:
                nxt = next((c for c in children if c["path"].rsplit("/", 1)[-1].startswith("{")), None)
                if nxt is None:
                    return None
                params[nxt["path"].rsplit("/", 1)[-1][1:-1]] = seg
            node = nxt
        return node, params

    def endpoint(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        found = self.match(path)
        if found is None:
            return None
        node, params = found
        info = (node.get("info") or {}).get(method)
        if info is None:
            return None
        return Endpoint(node["path"], method, info), params

    @staticmethod
    def validate(ep: Endpoint, params: dict[str, str]) -> dict[str, str]:
        """All errors for the merged path + query/body parameters (PVE reports them together)."""
        props = ep.properties
        indexed = {k[:-3]: v for k, v in props.items() if k.endswith("[n]")}
        errors: dict[str, str] = {}
        for name, value in params.items():
            spec = props.get(name)
            if spec is None:
                m = re.fullmatch(r"([a-z]+)(\d+)", name)
                spec = indexed.get(m.group(1)) if m else None
            if spec is None:
                if (ep.info.get("parameters") or {}).get("additionalProperties"):
                    continue
                errors[name] = "property is not defined in schema and the schema does not allow additional properties"
                continue
            msg = check_value(spec, str(value))
            if msg:
                errors[name] = msg
        for name, spec in props.items():
            if not spec.get("optional") and not name.endswith("[n]") and name not in params:
                errors[name] = "property is missing and it is not optional"
        return errors
