"""Pick the compute driver named by site.yaml's `driver.kind` (imported lazily)."""

from __future__ import annotations

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
