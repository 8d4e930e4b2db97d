"""Who may reach what, computed once from the site (pure): the operator sources, Traefik's source.

`operator_allow` is what the site file says operators come from; no container of the site counts
as an operator even when a range such as the default 10.0.0.0/16 contains it: not a user's (a
person's shell), and not a shared service's (a compromised SearXNG or Langfuse must not reach the
Traefik API, Prometheus or PostgreSQL's superuser). Traefik's operator allow-list, pg_hba's
superuser line and the firewall's operator set all use this one list; the control plane's own
container (the portal) is added where it needs the superuser (render/services.admin_sources).

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


def shared_networks(site: Site) -> list[Net]:
    a, b = parse_range(site.network.shared_range)
    return list(ipaddress.summarize_address_range(a, b))


def operator_sources(site: Site) -> tuple[str, ...]:
    """operator_allow minus every user range and the shared-service range, as sorted, collapsed CIDRs."""
    allow = _merged([(int(n.network_address), int(n.broadcast_address)) for n in
                     (ipaddress.IPv4Network(c, strict=False) for c in site.network.traefik.operator_allow)])
    holes = _merged([(int(n.network_address), int(n.broadcast_address))
                     for n in [*user_networks(site), *shared_networks(site)]])
    # Both lists are sorted and disjoint: one sweep subtracts the holes (linear, however many user
    # ranges a large site has).
    keep: list[tuple[int, int]] = []
    j = 0
    for lo, hi in allow:
        while j < len(holes) and holes[j][1] < lo:
            j += 1
        k = j
        while lo <= hi and k < len(holes) and holes[k][0] <= hi:
            if holes[k][0] > lo:
                keep.append((lo, holes[k][0] - 1))
            lo = max(lo, holes[k][1] + 1)
            k += 1
        if lo <= hi:
            keep.append((lo, hi))
    nets = [n for lo, hi in keep for n in ipaddress.summarize_address_range(
        ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi))]
    return tuple(str(n) for n in ipaddress.collapse_addresses(nets))


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


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
