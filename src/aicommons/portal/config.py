"""What one portal serves: the site file, whom it trusts, how it reaches the site's services."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from aicommons.errors import PermanentError

DEFAULT_OPERATOR_GROUP = "aicommons-operators"

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_proxies(values: list[str]) -> tuple[IpNet, ...]:
    """`10.0.4.10`, `::1` or a CIDR; a bad one is refused naming it."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise PermanentError(f"--trusted-proxy {v!r}: not an address or network; give Traefik's address, "
                                 "e.g. 10.0.4.10") from None
    return tuple(out)


@dataclass(frozen=True)
class PortalConfig:
    site_file: Path
    trusted_proxies: tuple[IpNet, ...]  # only these peers' X-authentik-* headers are believed
    state_path: str | None = None
    operator_group: str = DEFAULT_OPERATOR_GROUP
    targets: dict[str, str] = field(default_factory=dict)  # plan address -> where it is reached
    status_timeout: float = 3.0
    refresh_seconds: float = 10.0  # live status is swept again when older than this
    admin_token: bool = True  # allow the local operator token (sites without SSO)
    inside_site: bool = False  # serves from a container of the site: its firewall applies to the sweep

    def trusts(self, peer: str | None) -> bool:
        if not peer:
            return False
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted_proxies)
