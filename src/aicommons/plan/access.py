"""Who may reach what, computed once from the site (pure): the operator sources, Traefik's source.

`operator_allow` is what the site file says operators come from; user containers must never
count as operators even when a range such as the default 10.0.0.0/16 contains them. Traefik's
operator allow-list, pg_hba's superuser line and the firewall's operator set all use this one list.

`proxy_source` is the address Traefik's connections to the apps come *from*, which is not always
where it listens: every "trusted proxy" setting (the portal's, Authentik's, the user containers'
firewall) takes it from here.
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


def proxy_source(site: Site) -> str:
    """The source address of Traefik's connections to the site's containers.

    Proxmox: Traefik is a container of its own at network.traefik.address, so it dials from there.
    LXC: Traefik runs in the site's network namespace, where 10.0.4.10 is a /32 on the bridge and
    10.0.5.0/24 is the bridge's connected route, whose preferred source is the gateway address
    (drivers/lxc/netns.py: `ip addr replace {gateway}/{prefixlen} dev {bridge}`): the kernel picks
    10.0.5.1, not 10.0.4.10, for every connection into the subnet."""
    if site.driver.kind == "lxc":
        return str(site.network.gateway)
    return str(site.network.traefik.address)
