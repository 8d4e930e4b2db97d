"""The LXC site's bridge filter (pure): only Traefik reaches a user's apps.

On the LXC driver every container hangs off one bridge inside the site's network namespace,
where Traefik runs too. The rules here are an `ebtables-restore` file for the bridge's own
filter table (nf_tables' bridge family), so they hold whether or not `br_netfilter` hands
bridged frames to iptables. The driver loads them whole (replacing the table) and fails if the
kernel refuses them.

- FORWARD (container -> container): no frame reaches a user container's service ports (TCP and
  UDP below the ephemeral range 32768, where its own outgoing connections get their replies),
  from any container, shared services included; users never reach each other at all; no
  container may speak as the namespace's own addresses (ARP or IPv4: the gateway, which is
  Traefik's source, and Traefik's address); the site is IPv4-only, so IPv6 is dropped.
- OUTPUT (the namespace -> containers): a frame to a user's service ports must come from
  Traefik's source address (plan/access.py proxy_source). A container that routes a packet to
  a user through the gateway keeps its own source address and is dropped here; one that forges
  the gateway's address as source is dropped by the kernel (a local source arriving from
  outside) or, on the bridge, by FORWARD.

- FORWARD to the model server (llama-server, no authentication of its own): its model ports
  take frames only from its catalog `clients` (the gateway); every other container is dropped.
  The control plane reaches it from the namespace itself (OUTPUT), for `status`.

- INPUT (containers -> the namespace): Traefik's API port takes frames from the portal only.

What this cannot tell apart: Traefik and the control plane share the namespace and its source
address (both are the host's root). The host's own namespace has no route to the site.
User containers run no exporter on this driver, so Prometheus needs no exception.
"""

from __future__ import annotations

import ipaddress

from aicommons.plan.access import proxy_source, user_networks
from aicommons.spec.models import Site

SERVICE_PORTS = "0:32767"  # below Linux's default ip_local_port_range (32768-60999)
TO_USER = "AIC-TO-USER"
TRAEFIK_API_PORT = 8080  # the LXC Traefik's `traefik` entry point (drivers/lxc/traefik.py)


def bridge_rules(site: Site) -> str:
    """The site namespace's bridge filter table, as `ebtables-restore` reads it."""
    net = site.network
    source = proxy_source(site)
    own = sorted({source, str(net.gateway), str(net.traefik.address)}, key=ipaddress.IPv4Address)
    users = [str(n) for n in user_networks(site)]
    fwd: list[str] = []
    for a in own:
        fwd += [f"-p ARP --arp-ip-src {a} -j DROP", f"-p IPv4 --ip-src {a} -j DROP"]
    fwd.append("-p IPv6 -j DROP")
    fwd += [f"-p IPv4 --ip-dst {u} -j {TO_USER}" for u in users]
    # Reached only by frames to a user container: from another user, or to a service port.
    to_user = [f"-p IPv4 --ip-src {u} -j DROP" for u in users]
    to_user += [f"-p IPv4 --ip-proto {proto} --ip-dport {SERVICE_PORTS} -j DROP" for proto in ("tcp", "udp")]
    out = [f"-p IPv4 --ip-src ! {source} --ip-dst {u} --ip-proto {proto} --ip-dport {SERVICE_PORTS} -j DROP"
           for u in users for proto in ("tcp", "udp")]
    fwd += model_server_rules(site)
    lines = ["*filter", ":INPUT ACCEPT", ":FORWARD ACCEPT", ":OUTPUT ACCEPT", f":{TO_USER} RETURN"]
    lines += [f"-A INPUT {r}" for r in proxy_api_rules(site)]
    lines += [f"-A FORWARD {r}" for r in fwd] + [f"-A {TO_USER} {r}" for r in to_user]
    lines += [f"-A OUTPUT {r}" for r in out]
    return "\n".join(lines) + "\n"


def proxy_api_rules(site: Site) -> list[str]:
    """INPUT: Traefik's API entry point (read-only, but the whole routing table) takes frames
    from the portal's container alone (its status sweep reads the apps' health there); the
    control plane reads it from the namespace itself, which never crosses the bridge."""
    from aicommons.catalog import load_catalog
    from aicommons.plan import models

    rest = f"--ip-dst {site.network.traefik.address} --ip-proto tcp --ip-dport {TRAEFIK_API_PORT}"
    return ([f"-p IPv4 --ip-src {a} {rest} -j ACCEPT" for a in models.service_addresses(site, load_catalog(), ("portal",))]
            + [f"-p IPv4 {rest} -j DROP"])


def model_server_rules(site: Site) -> list[str]:
    """FORWARD rules: the model server's ports from its clients only (plan/models.py)."""
    from aicommons.catalog import load_catalog
    from aicommons.plan import models

    cat = load_catalog()
    if not models.serving(site):
        return []
    ov = site.services[models.SERVICE]
    server = str(ov.address) if ov.address is not None else str(
        site.network.subnet.network_address + (cat.services[models.SERVICE].octet or 0))
    ports = models.model_ports(cat)
    span = f"{min(ports)}:{max(ports)}"
    # In the order ebtables-save prints the matches (the driver reads the table back to compare).
    rest = f"--ip-dst {server} --ip-proto tcp --ip-dport {span}"
    return ([f"-p IPv4 --ip-src {c} {rest} -j ACCEPT" for c in models.client_addresses(site, cat)]
            + [f"-p IPv4 {rest} -j DROP"])
