"""Can this kernel mount a container's rootfs the way the driver does? Tried, not assumed.

Each container's rootfs is an overlay whose lower layer is the shared template mounted
*idmapped* into the site's uid range (idmap.py, prestart.py). That takes two kernel features:
- idmapped mounts (mount_setattr(2) with MOUNT_ATTR_IDMAP): Linux 5.12 (merge 7d6beb71da3c,
  "idmapped-mounts-v5.12": ext4, xfs, fat first; other filesystems later, tmpfs only in 6.3),
  and only on a filesystem that supports them: the one driver.cache_dir (the template) is on;
- overlayfs over an idmapped layer: Linux 5.19 (commit bc70682a497c "ovl: support idmapped
  layers", merged with ovl-update-5.19); before that overlayfs refused idmapped layers.
Debian 12's own kernel (6.1) has both. Rather than compare version numbers (backports and other
filesystems differ), `probe` does what prestart.py does, in a private mount namespace of a child
process: idmap the directory the template lives on, stack a read-only overlay on it, unmount
(the namespace dies with the child; nothing is left on the host, nothing is written).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

IDMAP_SINCE, OVERLAY_SINCE = "5.12", "5.19"
FIX = (f"run Linux {OVERLAY_SINCE} or later (Debian 12's own 6.1 kernel has both; idmapped mounts need "
       f"{IDMAP_SINCE}+, overlayfs over an idmapped lower layer {OVERLAY_SINCE}+) and keep driver.cache_dir on a "
       "filesystem with idmapped mounts (ext4, xfs or btrfs; tmpfs only from Linux 6.3)")


def existing(path: str) -> Path:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def probe(cache_dir: str, timeout: float = 30) -> str | None:
    """None when this kernel can mount the driver's rootfs over `cache_dir`'s filesystem; else the
    problem, with the kernel release and the fix. Needs root (as the driver does); else says so."""
    if os.geteuid() != 0:
        return None  # the driver runs as root; an unprivileged caller (a test, `plan` by a user) cannot tell
    where = existing(cache_dir)
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
                               "aicommons.drivers.lxc.kernel", str(where)],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not check this kernel's idmapped mounts ({exc}); {FIX}"
    if proc.returncode == 0:
        return None
    why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no reason given"]  # SystemExit's text
    return (f"this kernel ({os.uname().release}) cannot mount the containers' rootfs on {where}: {why[0]}. "
            f"Fix: {FIX}")


def _try(source: str) -> None:
    """In a private mount namespace: `source` idmapped, then an overlay over it (what prestart.py mounts).
    The mount points are emptied by unmounting and removed with rmdir only: a recursive delete would
    walk into the mounted cache dir."""
    import ctypes

    from aicommons.drivers.lxc import idmap

    libc = ctypes.CDLL(None, use_errno=True)
    tmp = tempfile.mkdtemp(prefix="aicommons-kprobe-")
    lower, empty, top = (os.path.join(tmp, n) for n in ("lower", "empty", "top"))
    for d in (lower, empty, top):
        os.mkdir(d)
    try:
        try:
            idmap.idmapped_mount(source, lower, idmap.FIRST, recursive=False)  # its filesystem, not those below
        except OSError as exc:
            raise SystemExit(f"idmapped mounts (Linux {IDMAP_SINCE}+, and the filesystem must support them): "
                             f"{exc.strerror or exc}") from None
        # two lower layers and no upper: a read-only overlay, nothing written anywhere; the second a
        # tmpfs of its own, so it never lies inside the first (overlapping layers are refused)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "tmpfs", empty], check=True,
                       capture_output=True)
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}:{empty}", top],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"overlayfs over an idmapped lower layer (Linux {OVERLAY_SINCE}+): "
                             f"{' '.join(r.stderr.split()) or 'mount failed'}")
    finally:
        for d in (top, lower, empty, tmp):
            libc.umount2(d.encode(), 2)  # MNT_DETACH; EINVAL where nothing is mounted
            try:
                os.rmdir(d)  # never a recursive delete (see above); a busy one stays, empty
            except OSError:
                pass


if __name__ == "__main__":
    _try(sys.argv[1])
