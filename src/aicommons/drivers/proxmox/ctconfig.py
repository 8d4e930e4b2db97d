"""The Proxmox config a planned container should have, and what differs from what it has."""

from __future__ import annotations

import re
from dataclasses import dataclass

from aicommons.drivers.proxmox.api import CtConfig, parse_props
from aicommons.plan.model import Container

TEMPLATE_TAG = "aicommons-template"
SWAP_MB = 512
STARTUP_UP = 30  # seconds before the next phase's container starts


@dataclass(frozen=True)
class Desired:
    hostname: str
    memory: int
    swap: int
    cores: int
    disk_gb: int
    net0: str
    tags: tuple[str, ...]
    onboot: int
    startup: str

    def settable(self) -> dict[str, str | int]:
        """What `PUT /config` takes (rootfs size goes through /resize)."""
        return {"hostname": self.hostname, "memory": self.memory, "swap": self.swap, "cores": self.cores,
                "net0": self.net0, "tags": ";".join(self.tags), "onboot": self.onboot, "startup": self.startup}


def site_tag(site_name: str) -> str:
    return re.sub(r"[^a-z0-9_\-+.]", "-", site_name.lower())


def desired(c: Container, site_name: str, bridge: str) -> Desired:
    net0 = f"name=eth0,bridge={bridge},ip={c.ip}/{c.prefixlen},gw={c.gateway},firewall=1"
    return Desired(
        hostname=c.hostname, memory=c.memory_mb, swap=SWAP_MB, cores=c.cores, disk_gb=c.disk_gb, net0=net0,
        tags=("aicommons", c.role, site_tag(site_name)), onboot=1, startup=f"order={c.phase},up={STARTUP_UP}",
    )


def _same_net(want: str, have: str) -> bool:
    # PVE adds hwaddr and type=veth to net0; only the keys we set matter.
    w, h = parse_props(want), parse_props(have)
    return all(h.get(k) == v for k, v in w.items())


def _same_startup(want: str, have: str) -> bool:
    norm = lambda s: {k if not k.startswith("_") else "order": v for k, v in parse_props(s).items()}  # noqa: E731
    return norm(want) == norm(have)


def changes(want: Desired, have: CtConfig) -> dict[str, str | int]:
    """Keys of `PUT /config` whose value differs (empty when the container matches the plan)."""
    out: dict[str, str | int] = {}
    for key, value in want.settable().items():
        cur = have.get(key)
        if key == "net0":
            same = cur is not None and _same_net(str(value), cur)
        elif key == "tags":
            same = set(re.split(r"[;, ]+", cur or "")) - {""} == set(want.tags)
        elif key == "startup":
            same = cur is not None and _same_startup(str(value), cur)
        else:
            same = cur is not None and str(cur) == str(value)
        if not same:
            out[key] = value
    return out


def needs_resize(want: Desired, have: CtConfig) -> bool:
    size = have.rootfs_gb
    return size is not None and size < want.disk_gb
