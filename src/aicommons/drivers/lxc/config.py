"""The LXC config of one container, as text (pure: no I/O).

Unprivileged (`lxc.idmap`: the site's range, idmap.py): root inside is an unprivileged uid on
the host. LXC's own device allow-list is kept (debian.common.conf includes common.conf's
`lxc.cgroup.devices.*`; debian.userns.conf is *not* included: it clears them again). AppArmor:
`generated`, LXC's profile where the kernel has AppArmor (without it LXC 5.0.2 uses its "nop"
driver; hostcheck.py says so at run time). Memory and CPU limits are LXC's own `lxc.cgroup.*`
keys (v1 on a hybrid host; `lxc.cgroup2.*` on a unified one: LXC ignores the other kind with a
warning) in the container's cgroups `lxc.cgroup.dir.*` (limits.py). The rootfs is a plain
directory the driver mounts before lxc-start (prestart.py); `lower` (the template) is kept in the
marker. The first line is the aicommons marker (site, role, name): how list/destroy/down know a
container is this site's and no one else's.
"""

from __future__ import annotations

import json

from aicommons.plan.model import Container

MARK = "# aicommons:"
PERIOD = 100000  # CFS period, us: cores x PERIOD of quota


def render(c: Container, *, site: str, bridge: str, lower: str, rootfs: str, idmap_base: int, ns: str,
           legacy_cgroups: bool = True, mounts: tuple[tuple[str, ...], ...] | list = (), cpus: str = "") -> str:
    """`mounts`: (host directory, path inside[, "ro" | "rw"]), read-only unless "rw" is said (the
    shared layers are ro; the portal's state directory is rw); `cpus`: a cpuset the container is
    pinned to (the model server: its threads need cores of their own)."""
    meta = {"site": site, "role": c.role, "name": c.name, "ip": c.ip, "hostname": c.hostname,
            "memory_mb": c.memory_mb, "cores": c.cores, "disk_gb": c.disk_gb,
            "services": list(c.services), "lower": lower, "idmap_base": idmap_base}
    cg = f"aicommons/{ns}"
    lines = [
        f"{MARK} {json.dumps(meta, sort_keys=True)}",
        "lxc.include = /usr/share/lxc/config/debian.common.conf",
        "lxc.arch = amd64",
        f"lxc.uts.name = {c.hostname}",
        f"lxc.idmap = u 0 {idmap_base} 65536",
        f"lxc.idmap = g 0 {idmap_base} 65536",
        f"lxc.rootfs.path = dir:{rootfs}",
        # LXC 5.0.2 src/lxc/lsm/apparmor.c: for an unprivileged container the generated profile adds
        # AA_PROFILE_UNPRIVILEGED (pivot_root, bind mounts, read-only remounts, propagation changes): what
        # systemd's sandboxing of the app units (ProtectSystem, PrivateTmp) needs. Unexercised on a kernel
        # without AppArmor.
        "lxc.apparmor.profile = generated",
        f"lxc.cgroup.dir.container = {cg}/{c.ctid}",
        "lxc.cgroup.dir.container.inner = payload",
        f"lxc.cgroup.dir.monitor = {cg}/monitor.{c.ctid}",
    ]
    lines += [f"{k} = {v}" for k, v in cgroup_keys(c, legacy_cgroups=legacy_cgroups, cpus=cpus)]
    lines += [
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
        # idmap=container: host-root-owned files show (and are written) as the container's root, not nobody
        lines.append(f"lxc.mount.entry = {host} {inside.lstrip('/')} none bind,{mode},create=dir,idmap=container 0 0")
    return "\n".join(lines) + "\n"


def cgroup_keys(c: Container, *, legacy_cgroups: bool = True, cpus: str = "") -> list[tuple[str, str]]:
    """The limits the plan asks for a container, as LXC keys: what the config carries and what the
    driver reads back from the kernel after start (limits.read_back)."""
    if legacy_cgroups:  # cgfsng.c __cg_legacy_setprop: the key after lxc.cgroup. is the v1 file name
        keys = [("lxc.cgroup.memory.limit_in_bytes", str(c.memory_mb * 1024 * 1024)),
                ("lxc.cgroup.cpu.cfs_period_us", str(PERIOD)),
                ("lxc.cgroup.cpu.cfs_quota_us", str(c.cores * PERIOD))]
    else:
        keys = [("lxc.cgroup2.memory.max", str(c.memory_mb * 1024 * 1024)),
                ("lxc.cgroup2.cpu.max", f"{c.cores * PERIOD} {PERIOD}")]
    if cpus:  # the same file name in both: cpuset.cpus
        keys.append((f"lxc.cgroup{'' if legacy_cgroups else '2'}.cpuset.cpus", cpus))
    return keys


def privileged(text: str) -> bool:
    """A config of this driver from before unprivileged containers (no idmap)."""
    return not any(line.startswith("lxc.idmap") for line in text.splitlines())


def meta_of(text: str) -> dict | None:
    """The aicommons marker of a config written by render(); None for anyone else's container."""
    first = text.split("\n", 1)[0]
    if not first.startswith(MARK):
        return None
    try:
        return json.loads(first[len(MARK):])
    except ValueError:
        return None
