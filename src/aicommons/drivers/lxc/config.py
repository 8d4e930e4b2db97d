"""The LXC config of one container, as text (pure: no I/O).

Needed on this kind of host (see machine-facts): device cgroup rules cleared and AppArmor
unconfined. No `lxc.cgroup.*` limit keys: LXC 5.0.2 refuses to start with them here, so the
driver applies memory/CPU limits itself (limits.py). The first line is the aicommons marker
(site, role, name): how list/destroy/down know a container is this site's and no one else's.
"""

from __future__ import annotations

import json

from aicommons.plan.model import Container

MARK = "# aicommons:"


def render(c: Container, *, site: str, bridge: str, lower: str, upper: str,
           mounts: tuple[tuple[str, ...], ...] | list = ()) -> str:
    """`mounts`: (host directory, path inside[, "ro" | "rw"]), read-only unless "rw" is said (the
    shared layers are ro; the portal's state directory is rw)."""
    meta = {"site": site, "role": c.role, "name": c.name, "ip": c.ip, "hostname": c.hostname,
            "memory_mb": c.memory_mb, "cores": c.cores, "disk_gb": c.disk_gb,
            "services": list(c.services)}
    lines = [
        f"{MARK} {json.dumps(meta, sort_keys=True)}",
        "lxc.include = /usr/share/lxc/config/debian.common.conf",
        "lxc.arch = amd64",
        f"lxc.uts.name = {c.hostname}",
        f"lxc.rootfs.path = overlay:{lower}:{upper}",
        "lxc.apparmor.profile = unconfined",
        "lxc.cgroup.devices.deny =",
        "lxc.cgroup.devices.allow =",
        "lxc.net.0.type = veth",
        f"lxc.net.0.link = {bridge}",
        "lxc.net.0.flags = up",
        "lxc.net.0.name = eth0",
        f"lxc.net.0.veth.pair = veth{c.ctid}",
        f"lxc.net.0.ipv4.address = {c.ip}/{c.prefixlen}",
        f"lxc.net.0.ipv4.gateway = {c.gateway}",
    ]
    for host, inside, *how in mounts:  # read-only by default: one layer serves every user's container
        if any(ch.isspace() for ch in host + inside):
            raise ValueError(f"mount path with whitespace: {host!r} -> {inside!r}")
        mode = "rw" if how == ["rw"] else "ro"
        lines.append(f"lxc.mount.entry = {host} {inside.lstrip('/')} none bind,{mode},create=dir 0 0")
    return "\n".join(lines) + "\n"


def meta_of(text: str) -> dict | None:
    """The aicommons marker of a config written by render(); None for anyone else's container."""
    first = text.split("\n", 1)[0]
    if not first.startswith(MARK):
        return None
    try:
        return json.loads(first[len(MARK):])
    except ValueError:
        return None
