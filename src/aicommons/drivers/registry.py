"""Pick the compute driver named by site.yaml's `driver.kind` (imported lazily)."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlparse

from aicommons.drivers.base import ComputeDriver
from aicommons.errors import PermanentError
from aicommons.spec.models import Site


# RFC 2606 names: `init` writes one as a placeholder. Never dial it (it would leave the site).
_RESERVED = ("example.org", "example.com", "example.net", ".example", ".invalid", ".test")


def placeholder_host(url: str) -> str | None:
    host = (urlparse(url).hostname or "").lower()
    return host if any(host == r.lstrip(".") or host.endswith("." + r.lstrip(".")) for r in _RESERVED) else None


def driver_for(site: Site, **options) -> ComputeDriver:
    kind = site.driver.kind
    if kind == "proxmox" and (host := placeholder_host(site.driver.api_url)):
        raise PermanentError(f"driver.api_url: {host} is the placeholder `aicommons init` wrote; "
                             "set it to your Proxmox VE API, e.g. https://pve1.your-domain:8006")
    if kind == "proxmox":
        from aicommons.drivers.proxmox.driver import ProxmoxDriver

        return ProxmoxDriver.from_site(site, **options)
    if kind == "lxc":
        from aicommons.drivers.lxc.driver import LxcDriver

        return LxcDriver.from_site(site, **options)
    raise PermanentError(f"driver.kind: unknown driver {kind!r}; use proxmox or lxc")


def enter_site_network(site: Site) -> None:
    """Run the calling command where the site's addresses exist, before it dials them.

    An LXC site's 10.0.5.0/24 lives only inside the driver's network namespace: `status`,
    `backup` and `audit` join it, as `up` does. With no namespace the site is not up, and
    dialling its addresses from the host would send them out of this machine: refuse instead.
    Only the `aicommons` command itself joins (in-process callers keep their loopback).
    """
    if site.driver.kind != "lxc" or Path(sys.argv[0]).name != "aicommons":
        return
    from aicommons.drivers.lxc import netns

    if not netns.exists(site.driver.netns):
        raise PermanentError(f"the LXC site is not up: network namespace {site.driver.netns!r} does not exist "
                             "(its addresses exist only there); run `aicommons up`")
    netns.join(site.driver.netns)
