"""Pick the compute driver named by site.yaml's `driver.kind` (imported lazily)."""

from __future__ import annotations

from aicommons.drivers.base import ComputeDriver
from aicommons.errors import PermanentError
from aicommons.spec.models import Site


def driver_for(site: Site, **options) -> ComputeDriver:
    kind = site.driver.kind
    if kind == "proxmox":
        from aicommons.drivers.proxmox.driver import ProxmoxDriver

        return ProxmoxDriver.from_site(site, **options)
    if kind == "lxc":
        from aicommons.drivers.lxc.driver import LxcDriver

        return LxcDriver.from_site(site, **options)
    raise PermanentError(f"driver.kind: unknown driver {kind!r}; use proxmox or lxc")
