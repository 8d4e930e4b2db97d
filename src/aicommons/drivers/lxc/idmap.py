"""Unprivileged containers: the site's uid/gid range, the idmapped template, and shifting old data.

Every container of a site maps its uids and gids 0..65535 to the host's BASE..BASE+65535
(`lxc.idmap`), so root inside is an unprivileged uid outside: it cannot mknod, mount a block
device or devtmpfs, or reach the host's files. BASE is derived from the site's network
namespace (unique per host): slot = sha256(netns) mod 16384, BASE = 2^20 + slot * 65536, i.e.
within [1048576, 1074790400). Starting at 2^20 stays clear of the /etc/subuid ranges Debian hands
out to login users (100000 onwards, 65536 each); two sites meet in one slot with odds 1/16384.

The rootfs looks root-owned inside without a copy per container: the shared, unshifted template
(owned by 0 on disk) is mounted *idmapped* into the container's range (open_tree(2) +
mount_setattr(2) with MOUNT_ATTR_IDMAP + move_mount(2); util-linux 2.38 has no option for it) as
the lower layer of an overlay whose upper dir (the container's own data) is owned by BASE.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import signal
import stat
import struct
from pathlib import Path

SIZE = 65536
FIRST = 1 << 20
SLOTS = 16384


def site_base(ns: str) -> int:
    slot = int.from_bytes(hashlib.sha256(ns.encode()).digest()[:4], "big") % SLOTS
    return FIRST + slot * SIZE


# ---- the idmapped lower layer ---------------------------------------------------------------
# x86_64 syscall numbers and flags, from the kernel's uapi headers (Debian 12's linux-libc-dev):
# asm/unistd_64.h __NR_open_tree 428, __NR_move_mount 429, __NR_mount_setattr 442;
# linux/mount.h OPEN_TREE_CLONE 1, MOVE_MOUNT_F_EMPTY_PATH 0x4, MOUNT_ATTR_IDMAP 0x00100000,
# struct mount_attr {__u64 attr_set, attr_clr, propagation, userns_fd} (32 bytes, MOUNT_ATTR_SIZE_VER0);
# linux/fcntl.h AT_EMPTY_PATH 0x1000, AT_RECURSIVE 0x8000; OPEN_TREE_CLOEXEC = O_CLOEXEC.
NR_OPEN_TREE, NR_MOVE_MOUNT, NR_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE, MOVE_MOUNT_F_EMPTY_PATH, MOUNT_ATTR_IDMAP = 1, 0x4, 0x00100000
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
CLONE_NEWUSER = 0x10000000


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def userns_fd(base: int, size: int = SIZE) -> int:
    """An fd of a fresh user namespace mapping 0..size-1 to base..: a child unshares, we map it."""
    libc = _libc()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        err = 0 if libc.unshare(CLONE_NEWUSER) == 0 else ctypes.get_errno()
        os.write(w, str(err).encode() + b"\n")
        os.close(w)
        while True:
            signal.pause()  # until the parent has opened our namespace and kills us
    os.close(w)
    try:
        err = int(os.read(r, 16).strip() or errno.EIO)
        if err:
            # EPERM for root: a chrooted caller (kernel/user_namespace.c refuses those) or
            # user.max_user_namespaces set to 0
            hint = " (not allowed in a chroot, or user.max_user_namespaces is 0)" if err == errno.EPERM else ""
            raise OSError(err, f"unshare(CLONE_NEWUSER): {os.strerror(err)}{hint}")
        for f in ("uid_map", "gid_map"):
            Path(f"/proc/{pid}/{f}").write_text(f"0 {base} {size}\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(r)
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def idmapped_mount(source: str, target: str, base: int, *, recursive: bool = True) -> None:
    """Mount `source` at `target` with its owners shifted by `base` (the host's files unchanged);
    with the mounts below it unless not `recursive`."""
    libc = _libc()
    rec = AT_RECURSIVE if recursive else 0
    fd = _check(libc.syscall(NR_OPEN_TREE, AT_FDCWD, source.encode(),
                             OPEN_TREE_CLONE | os.O_CLOEXEC | rec), f"open_tree({source})")
    ns = userns_fd(base)
    try:
        attr = MountAttr(attr_set=MOUNT_ATTR_IDMAP, userns_fd=ns)
        _check(libc.syscall(NR_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | rec, ctypes.byref(attr),
                            ctypes.c_size_t(ctypes.sizeof(attr))), f"mount_setattr(MOUNT_ATTR_IDMAP) on {source}")
        _check(libc.syscall(NR_MOVE_MOUNT, fd, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH),
               f"move_mount to {target}")
    finally:
        os.close(ns)
        os.close(fd)


# ---- converting a privileged container's own data ------------------------------------------

ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
ACL_USER, ACL_GROUP = 0x02, 0x08  # entry tags with an id (linux/posix_acl.h)
CAPS = "security.capability"


def shift_tree(root: Path, base: int) -> int:
    """Shift every owner below `root` from 0..65535 to base.. (already shifted entries are left:
    an interrupted run can be repeated). Keeps setuid/setgid bits (chown clears them), shifts
    POSIX ACL entries and rewrites file capabilities as v3 with rootid = base. Returns entries shifted."""
    count = _shift_one(str(root), base)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            count += _shift_one(os.path.join(dirpath, name), base)
    return count


def _shift_one(p: str, base: int) -> int:
    st = os.lstat(p)
    if st.st_uid >= SIZE and st.st_gid >= SIZE:
        return 0
    uid = st.st_uid + base if st.st_uid < SIZE else st.st_uid
    gid = st.st_gid + base if st.st_gid < SIZE else st.st_gid
    link = stat.S_ISLNK(st.st_mode)
    caps = None if link else _getxattr(p, CAPS)
    os.chown(p, uid, gid, follow_symlinks=False)
    if not link:
        if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(p, stat.S_IMODE(st.st_mode))
        for attr in ACL_XATTRS:
            acl = _getxattr(p, attr)
            if acl:
                os.setxattr(p, attr, _shift_acl(acl, base))
        if caps:
            os.setxattr(p, CAPS, _caps_v3(caps, base))
    return 1


def _getxattr(p: str, attr: str) -> bytes | None:
    try:
        return os.getxattr(p, attr, follow_symlinks=False)
    except OSError:
        return None


def _shift_acl(data: bytes, base: int) -> bytes:
    """posix_acl_xattr: a u32 version header, then (u16 tag, u16 perm, u32 id) entries."""
    out = bytearray(data[:4])
    for off in range(4, len(data), 8):
        tag, perm, ident = struct.unpack_from("<HHI", data, off)
        if tag in (ACL_USER, ACL_GROUP) and ident < SIZE:
            ident += base
        out += struct.pack("<HHI", tag, perm, ident)
    return bytes(out)


def _caps_v3(data: bytes, base: int) -> bytes:
    """vfs_cap_data (linux/capability.h): magic_etc, then (permitted, inheritable) u32 pairs;
    v3 (0x03000000) appends rootid. Rewritten as v3 so the caps hold only for the container's root."""
    magic = struct.unpack_from("<I", data)[0]
    flags = magic & 0x1
    body = data[4:20].ljust(16, b"\0")
    return struct.pack("<I", 0x03000000 | flags) + body + struct.pack("<I", base)
