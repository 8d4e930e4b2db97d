"""Can a person with a shell in their container become the host? Probes run as root inside.

People get shells in their containers (Jupyter and code-server terminals), so root inside is
assumed. From inside each running container: its uid map must be shifted; `mknod` of the host
disk's block device, `mount -t ext4` of it and `mount -t devtmpfs` must be refused; a marker file
the host writes beside the containers (on the host's disk) must not be readable by any path
tried (the same path, /proc/<pid>/root of every visible process, a chroot escape, the block
device if it could be mounted). And each app's user must be refused another app's data dir.
From the host: every config carries `lxc.idmap`, keeps LXC's device allow-list, is not
AppArmor-unconfined. A privileged container fails the probes (tests/test_lxc_driver.py).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from aicommons.drivers.base import HostProbe

_PROBE = r"""
import ctypes, json, os, stat, sys
major, minor, marker, token, on_dev = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
libc = ctypes.CDLL(None, use_errno=True)
out = []
def res(probe, refused, detail=""):
    out.append({"probe": probe, "refused": refused, "detail": detail, "actor": "root"})
def err():
    e = ctypes.get_errno(); return f"{os.strerror(e)} (errno {e})"
m = open("/proc/self/uid_map").read().split()
res("uid_map shifted", m[:1] == ["0"] and m[1] != "0", " ".join(m[:3]))
node, mnt = "/tmp/.aic-probe-blk", "/tmp/.aic-probe-mnt"
os.makedirs(mnt, exist_ok=True)
try:
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(major, minor))
    res(f"mknod b {major}:{minor}", False, "created")
except OSError as e:
    res(f"mknod b {major}:{minor}", True, e.strerror)
found = []
def look(path):
    try:
        if open(path).read() == token:
            found.append(path)
    except OSError:
        pass
# read-write like the host's own mount: a read-only one of a mounted superblock fails with EBUSY,
# which would look like a refusal. nosuid, nodev, noexec; unmounted at once.
if libc.mount(node.encode(), mnt.encode(), b"ext4", 2 | 4 | 8, None) == 0:
    look(mnt + on_dev)
    libc.umount2(mnt.encode(), 2)
    res(f"mount -t ext4 {major}:{minor}", False, "mounted")
else:
    res(f"mount -t ext4 {major}:{minor}", True, err())
if libc.mount(b"none", mnt.encode(), b"devtmpfs", 0, None) == 0:
    libc.umount2(mnt.encode(), 2)
    res("mount -t devtmpfs", False, "mounted")
else:
    res("mount -t devtmpfs", True, err())
try:
    os.unlink(node)
except OSError:
    pass
look(marker)
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    look(f"/proc/{pid}/root{marker}")
r, w = os.pipe()
if os.fork() == 0:  # the classic chroot escape: chroot deeper, walk up, chroot "."
    try:
        os.makedirs("/tmp/.aic-probe-jail", exist_ok=True)
        os.chroot("/tmp/.aic-probe-jail")
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        os.write(w, open(marker).read().encode())
    except OSError:
        pass
    os._exit(0)
os.close(w)
os.wait()
if os.read(r, 4096).decode() == token:
    found.append("chroot escape")
res("host's / (a marker on the host's disk)", not found, ", ".join(found) or "not reachable by any path tried")
users = [l.split(":") for l in open("/etc/passwd") if l.startswith("aic-")]
for a in users:
    for b in users:
        if a is b:
            continue
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([]); os.setgid(int(a[3])); os.setuid(int(a[2]))
                os.listdir(b[5]); os.write(w, b"read")
            except OSError as e:
                os.write(w, e.strerror.encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        said = os.read(r, 200).decode()
        out.append({"probe": f"read {b[0]}'s data dir {b[5]}", "refused": said != "read", "detail": said,
                    "actor": a[0]})
print(json.dumps(out))
"""


def config_probes(ctid: int, text: str) -> list[HostProbe]:
    """What a container's config grants, read from the host (no need for it to run)."""
    lines = [ln.strip() for ln in text.splitlines()]
    cleared = [ln for ln in lines if ln.replace(" ", "") in ("lxc.cgroup.devices.allow=", "lxc.cgroup.devices.deny=",
                                                             "lxc.cgroup2.devices.allow=", "lxc.cgroup2.devices.deny=")]
    return [
        HostProbe(ctid, "config", "config: lxc.idmap (unprivileged)", any(ln.startswith("lxc.idmap") for ln in lines),
                  "" if any(ln.startswith("lxc.idmap") for ln in lines) else "no lxc.idmap: root inside is the host's root"),
        HostProbe(ctid, "config", "config: LXC's device allow-list kept", not cleared, "; ".join(cleared)),
        HostProbe(ctid, "config", "config: not AppArmor-unconfined",
                  "lxc.apparmor.profile = unconfined" not in lines, ""),
    ]


def run(driver, ctids) -> list[HostProbe]:
    """Config probes for every container given that exists; the probes inside for those running."""
    out: list[HostProbe] = []
    made = [int(c) for c in ctids if Path(driver.lxcpath, str(int(c)), "config").exists()]
    for ctid in made:
        out += config_probes(ctid, Path(driver.lxcpath, str(ctid), "config").read_text())
    running = [c for c in made if driver._status(c) == "running"]
    if not running:
        return out
    marker = driver.lxcpath / f".hostprobe-{secrets.token_hex(6)}"
    token = secrets.token_hex(16)
    marker.write_text(token)
    marker.chmod(0o600)
    dev = os.stat(driver.lxcpath).st_dev
    top = marker.parent
    while top != top.parent and os.stat(top.parent).st_dev == dev:
        top = top.parent  # the mount point of the filesystem the marker is on
    try:
        for ctid in running:
            res = driver.exec(ctid, ["python3", "-c", _PROBE, str(os.major(dev)), str(os.minor(dev)), str(marker), token,
                                     "/" + str(marker.relative_to(top))], timeout=120)
            try:
                got = json.loads(res.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                out.append(HostProbe(ctid, "root", "probes inside", None,
                                     f"the probe did not run: {(res.stderr or res.stdout).strip()[-300:]}"))
                continue
            out += [HostProbe(ctid, g["actor"], g["probe"], g["refused"], g["detail"]) for g in got]
    finally:
        marker.unlink(missing_ok=True)
    return out
