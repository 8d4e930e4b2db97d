"""Pick the compute driver named by site.yaml's `driver.kind` (imported lazily)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from aicommons.drivers.base import ComputeDriver
from aicommons.errors import PermanentError
from aicommons.spec.models import Site

# RFC 2606 names: `init` writes one as a placeholder. Never dial it (it would leave the site).
_RESERVED = ("example.org", "example.com", "example.net", ".example", ".invalid", ".test")

# The file-backed fake world (drivers/fake.py, tenancy/fake.py): set only by the test suite
# (tests/fakeworld.py), never by an environment variable of the shipped CLI or portal (issue 23).
FAKE_WORLD: str | None = None


def placeholder_host(url: str) -> str | None:
    host = (urlparse(url).hostname or "").lower()
    return host if any(host == r.lstrip(".") or host.endswith("." + r.lstrip(".")) for r in _RESERVED) else None


_JOIN = False


def allow_joining_site_networks() -> None:
    """Said once by the `aicommons` command: it may move into an LXC site's network namespace to
    reach the site's addresses. Library callers (tests) do not by default: joining moves their
    own 127.0.0.1 too."""
    global _JOIN
    _JOIN = True


def site_owner(site_file: str | os.PathLike) -> str:
    """What marks a site's host resources as its own: the directory of its site file."""
    return str(Path(site_file).resolve().parent)


def driver_for(site: Site, **options) -> ComputeDriver:
    kind = site.driver.kind
    if site.driver.kind == "proxmox" and (host := placeholder_host(site.driver.api_url)):
        raise PermanentError(f"driver.api_url: {host} is the placeholder `aicommons init` wrote; "
                             "set it to your Proxmox VE API, e.g. https://pve1.your-domain:8006")
    if kind == "proxmox":
        from aicommons.drivers.proxmox.driver import ProxmoxDriver

        options.pop("owner", None)  # Proxmox resources are named by CTID on the cluster, not per site
        return ProxmoxDriver.from_site(site, **options)
    if kind == "lxc":
        from aicommons.drivers.lxc.driver import LxcDriver

        return LxcDriver.from_site(site, **{"join": _JOIN, **options})
    raise PermanentError(f"driver.kind: unknown driver {kind!r}; use proxmox or lxc")


def check_host(site: Site, *, destroy: bool = False) -> None:
    """Refuse at once (PermanentError, the whole list and the command that installs it) when this
    host lacks a program or package the site's driver runs to apply it (or, destroy, to take it down).
    The LXC driver's list is drivers/lxc/needs.py; a Proxmox site needs nothing on this host beyond
    the Python packages (its checks are of the cluster: ProxmoxDriver.check)."""
    if site.driver.kind == "lxc":
        from aicommons.drivers.lxc import needs

        needs.require(needs.DOWN if destroy else needs.APPLY, site.driver.cache_dir or needs.DEFAULT_CACHE_DIR)


def enter_site_network(site: Site, owner: str | None = None) -> None:
    """Run the calling command where the site's addresses exist, before it dials them.

    An LXC site's 10.0.5.0/24 lives only inside the driver's network namespace: `status`,
    `backup` and `audit` join it, as `up` does. With no namespace the site is not up, and
    dialling its addresses from the host would send them out of this machine: refuse instead.
    Only a caller that allowed it joins (the `aicommons` command); any other is refused rather
    than let dial the site's addresses from the host.
    """
    if site.driver.kind != "lxc":
        return
    from aicommons.render.aicservice import IN_SITE_ENV

    if os.environ.get(IN_SITE_ENV):
        return  # already on the site's network: a service in one of its containers (the portal)
    from aicommons.drivers.lxc import netns
    from aicommons.drivers.lxc.driver import check_owner

    check_owner(site.driver.lxcpath, site.driver.netns, owner)  # never another site's namespace
    if all(ov.external is not None for ov in site.services.values()):
        return  # nothing of the site's own to dial: `external:` servers are reached from here
    if FAKE_WORLD:
        return  # the test suite's file-backed fake world has no namespace: its back ends are files
    assert site.driver.netns is not None, "Site fills it in for an LXC site (spec/models.py)"
    if not netns.exists(site.driver.netns):
        raise PermanentError(f"the LXC site is not up: network namespace {site.driver.netns!r} does not exist "
                             "(its addresses exist only there); run `aicommons up`")
    if not _JOIN:
        raise PermanentError(f"the LXC site's addresses exist only in network namespace {site.driver.netns!r}; "
                             "run this through the `aicommons` command, which joins it")
    netns.enter(site.driver.netns, site.driver.mirror, site.driver.nat)
