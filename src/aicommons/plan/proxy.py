"""Where Traefik's connections to the site's containers come from, per driver (pure).

Anything that believes identity headers only from Traefik (the portal's --trusted-proxy, the
apps' trusted proxies) must name this address, not Traefik's listening one: on the LXC driver
Traefik runs in the site's network namespace with 10.0.4.10/32 as an extra address on the
bridge, and the kernel picks the bridge's primary address in the containers' subnet, the
gateway (10.0.5.1), as the source of its connections there (drivers/lxc/netns.py). On Proxmox
Traefik is its own host at network.traefik.address and connects from it.
"""

from __future__ import annotations

from aicommons.spec.models import Site


def traefik_source(site: Site) -> str:
    if site.driver.kind == "lxc":
        return str(site.network.gateway)
    return str(site.network.traefik.address)
