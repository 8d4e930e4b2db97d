"""Run as `ip netns exec NS python -m aicommons.drivers.lxc.prestart SPEC -- lxc-start ...`.

`ip netns exec` gives its command a private mount namespace with a fresh /sys: no cgroup
hierarchy is mounted there, so LXC could neither apply its `lxc.cgroup.*` keys (the device
allow-list, memory, CPU) nor place the container. In that namespace (the host's mount table is
not touched) this mounts the host's cgroup hierarchies again, mounts the container's rootfs
(the template idmapped into the site's range, with the container's overlay on top; see
idmap.py), then execs lxc-start. The mounts live as long as the namespace: the container's
monitor holds it, so a stopped container leaves no mount behind on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def mount(fstype: str, source: str, target: str, options: str) -> None:
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", "-t", fstype, "-o", options, source, target], check=True, capture_output=True)


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    if argv[2] != "--":
        raise SystemExit("usage: prestart SPEC -- lxc-start ...")
    if spec.get("cgroups"):
        if all(target != "/sys/fs/cgroup" for _, _, target in spec["cgroups"]):  # v1/hybrid: a tmpfs holds them
            mount("tmpfs", "cgroup", "/sys/fs/cgroup", "mode=755")
        for fstype, options, target in spec["cgroups"]:
            mount(fstype, "cgroup", target, options)
    for source, target in spec.get("binds", []):  # the control plane's directories, staged (aicservice.py)
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "--bind", source, target], check=True, capture_output=True)
    if spec.get("rootfs"):
        from aicommons.drivers.lxc import idmap

        r = spec["rootfs"]
        idmap.idmapped_mount(r["lower"], r["lower_mnt"], int(r["base"]))
        mount("overlay", "overlay", r["target"],
              f"lowerdir={r['lower_mnt']},upperdir={r['upper']},workdir={r['work']}")
    os.execvp(argv[3], argv[3:])


if __name__ == "__main__":
    try:
        main(sys.argv)
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError, IndexError) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else ""
        print(f"aicommons prestart: {exc} {detail}".strip(), file=sys.stderr)
        raise SystemExit(1) from None
