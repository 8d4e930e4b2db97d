"""Who may reach what, computed once from the site (pure): the operator sources.

`operator_allow` is what the site file says operators come from; user containers must never
count as operators even when a range such as the default 10.0.0.0/16 contains them. Traefik's
operator allow-list, pg_hba's superuser line and the firewall's operator set all use this one list.
"""

from __future__ import annotations

import ipaddress

from aicommons.spec.models import Site, parse_range

Net = ipaddress.IPv4Network


def user_networks(site: Site) -> list[Net]:
    """Every user range as CIDR blocks."""
    out: list[Net] = []
    for text in site.network.user_ranges:
        a, b = parse_range(text)
        out.extend(ipaddress.summarize_address_range(a, b))
    return out


def operator_sources(site: Site) -> tuple[str, ...]:
    """operator_allow minus every user range, as sorted, collapsed CIDRs."""
    keep: list[Net] = [ipaddress.IPv4Network(c, strict=False) for c in site.network.traefik.operator_allow]
    for hole in user_networks(site):
        nxt: list[Net] = []
        for net in keep:
            if hole.subnet_of(net):
                nxt.extend(net.address_exclude(hole))
            elif not net.subnet_of(hole):
                nxt.append(net)
        keep = nxt
    return tuple(str(n) for n in ipaddress.collapse_addresses(keep))
