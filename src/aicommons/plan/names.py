"""Names of every tenant slice and the rules each back end imposes on them.

One place decides `openwebui_user1`, `u_user1`, `t:user1:`, `user1-openwebui`, `ai-user1`, so
the planner, the renderers and the tenancy back ends can never disagree.
"""

from __future__ import annotations

import ipaddress
import re

PG_MAX = 63  # NAMEDATALEN - 1, in bytes
DNS_LABEL_MAX = 63


def pg_role(user: str) -> str:
    return f"u_{user.replace('-', '_')}"


def pg_database(app_db: str, user: str) -> str:
    return f"{app_db}_{user.replace('-', '_')}"


def redis_user(user: str) -> str:
    return f"u_{user}"


# Tenant keys live under `t:`, which no shared service writes (Langfuse's `langfuse:*`, BullMQ's
# `bull:*`, Celery's and Formbricks' own): a user's name can then never make its key pattern
# cover a shared service's keys (issue 23). docs/security.md lists the shared services' prefixes.
REDIS_TENANT_SPACE = "t:"


def redis_prefix(user: str) -> str:
    return f"{REDIS_TENANT_SPACE}{user}:"


# A user's own Redis server (redis.isolation=instance) listens on this plus its CTID: stable while
# the user exists (the CTID follows its address), unique per user, clear of 6379 and the exporter.
REDIS_USER_PORT_BASE = 16000


def redis_port(ctid: int) -> int | None:
    """The port of the user's own Redis server; None when the CTID puts it past 65535."""
    port = REDIS_USER_PORT_BASE + ctid
    return port if port <= 65535 else None


def qdrant_prefix(user: str) -> str:
    return user.replace("-", "_")


def qdrant_collection(user: str, suffix: str) -> str:
    return f"{qdrant_prefix(user)}_{suffix}"


def bucket(user: str, purpose: str) -> str:
    return f"{user}-{purpose}"


def s3_key_name(user: str) -> str:
    return f"aicommons-{user}"


def user_host(prefix: str, user: str, domain: str) -> str:
    return f"{prefix}-{user}.{domain}"


def shared_host(prefix: str, domain: str) -> str:
    return f"{prefix}.{domain}"


def user_hostname(user: str) -> str:
    return f"user-{user}"


MIN_CTID = 100  # PVE's `pve-vmid` format: 100..999999999 (pve-common PVE::JSONSchema)


def ctid_for(ip: ipaddress.IPv4Address, primary: ipaddress.IPv4Network) -> int:
    """CTID = last octet in the primary /24 (the reference architecture's rule); third octet * 1000 + last elsewhere.

    10.0.5.200 -> 200 (as in the reference architecture), 10.0.6.200 -> 6200. Primary CTIDs are < 256 and the others are
    >= 1000, so the two never meet; Proxmox accepts 100..999999999.
    """
    o = ip.packed
    if ip in primary:
        return o[3]
    return o[2] * 1000 + o[3]


def traefik_file(ip: ipaddress.IPv4Address | str, pattern: str) -> str:
    o = ipaddress.IPv4Address(ip).packed
    return pattern.format(o1=o[0], o2=o[1], o3=o[2], o4=o[3])


# ---- rules ---------------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")


def pg_identifier_problem(name: str) -> str | None:
    if len(name.encode()) > PG_MAX:
        return f"PostgreSQL name {name!r} is {len(name.encode())} bytes; the limit is {PG_MAX}"
    return None


def dns_label_problem(label: str) -> str | None:
    if len(label) > DNS_LABEL_MAX:
        return f"DNS label {label!r} is {len(label)} characters; the limit is {DNS_LABEL_MAX}"
    if not _DNS_LABEL.match(label):
        return f"{label!r} is not a valid DNS label"
    return None


def bucket_problem(name: str) -> str | None:
    if not 3 <= len(name) <= 63:
        return f"bucket name {name!r} must be 3-63 characters"
    if not _BUCKET.match(name) or ".." in name:
        return f"bucket name {name!r} breaks S3 naming rules"
    if name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3")):
        return f"bucket name {name!r} uses a prefix or suffix S3 reserves"
    try:
        ipaddress.IPv4Address(name)
        return f"bucket name {name!r} looks like an IP address"
    except ValueError:
        return None
