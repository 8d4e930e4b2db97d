"""The README's commands on a fresh Debian 12, with nothing preinstalled.

A minimal Debian 12 root filesystem is built with debootstrap (`--variant=minbase`: only
Priority required, no Recommends) and cached read-only under the driver's cache dir
(/var/cache/aicommons/fresh/<mirror+suite key>/, or $AICOMMONS_CACHE_DIR). Each run mounts a
throw-away overlay on it, copies this repository in (its tracked files only, no .venv), and
in a private mount and PID namespace (`unshare`) makes it the root (pivot_root) and runs:

  bash scripts/install.sh             the runtime install alone; then `aicommons doctor` (must find
                                      everything the LXC driver runs: drivers/lxc/needs.py), the
                                      README's first command as far as this allows
                                      (`aicommons up --yes --dry-run`: every preflight and the plan
                                      of the default site, nothing written), `init` and `validate`
  bash scripts/install.sh --test      the test tools; then pytest on the non-LXC suite

Real: debootstrap, apt from the Debian mirror, pip from PyPI, the suite's real servers
(PostgreSQL 15, Redis 7, Traefik 3, promtool) installed by the script inside the rootfs.
The chroot gets the host's resolv.conf and extra CA certificates
(/usr/local/share/ca-certificates: the machine's network environment, e.g. a TLS-inspecting
egress proxy), nothing else of it. Kept between runs, to stay quick: the rootfs itself (never written: runs write to the
overlay), and the download caches of .deb files and wheels (downloads, not installs).
NOT run inside: the LXC tests (`-m "not e2e"` and AICOMMONS_NO_LXC=1), and the portal's
browser tests (tests/test_portal.py: Chromium wants the host's /dev/shm and sandbox setup; inside,
install.sh --test installing chromium and playwright is what is proven; the tests run on the host). A chroot shares the
host's kernel: its LXC containers, network namespaces and iptables rules would be the host's,
beside the outer suite's own; so the chroot proves the install and the rest of the suite, and
the LXC tests run on the host (where install.sh ran the same way). That is also where `up`
stops here: past install and preflight, at its plan (`--dry-run`), because applying would make
the namespace, NAT rules and containers in the host's kernel. That install.sh puts what LXC
needs in place is checked inside: `/usr/share/lxc/config/debian.common.conf` (the file whose
absence broke every container start) and, through `aicommons doctor`, each program the driver
starts and each package it needs, with nothing of it there before the install.
Skipped when not root or without debootstrap/unshare. Set AICOMMONS_FRESH_SUITE=0 to run only
the install part (minutes) rather than the suite inside as well.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from aicommons.drivers.lxc import needs
from tests.repocopy import copy_repo

MIRROR = os.environ.get("AICOMMONS_FRESH_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"

pytestmark = [
    pytest.mark.fresh,
    pytest.mark.skipif(os.environ.get("AICOMMONS_NO_LXC") == "1", reason="already inside the fresh rootfs"),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("debootstrap") or not shutil.which("unshare"),
                       reason="needs root, debootstrap and unshare"),
]

# What the LXC driver runs (its one list, which `aicommons doctor` checks inside after the runtime install).
NEEDS = needs.all_needs()
TOOLS = [n.name for n in NEEDS if n.kind == "program"]


def cache_dir() -> Path:
    key = hashlib.sha256(f"{MIRROR} {SUITE} minbase".encode()).hexdigest()[:12]
    return Path(os.environ.get("AICOMMONS_CACHE_DIR", "/var/cache/aicommons")) / "fresh" / f"{SUITE}-{key}"


def base_rootfs() -> Path:
    """The pristine debootstrap rootfs, built once (a half-built one is redone, never used)."""
    d = cache_dir()
    rootfs, done = d / "rootfs", d / "ready"
    if done.exists():
        return rootfs
    shutil.rmtree(rootfs, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase", SUITE,
                    str(rootfs), MIRROR], check=True, capture_output=True, timeout=1800)
    done.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    return rootfs


SCRIPT = r"""
set -eu
cd /root/aicommons
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PIP_CACHE_DIR=/var/cache/pip-downloads
step() {{ echo "=== $1 $(date +%s)"; }}
step before
for t in {tools}; do command -v "$t" >/dev/null && echo "present before install: $t"; done
step install
bash scripts/install.sh
test -f /usr/share/lxc/config/debian.common.conf || {{ echo "MISSING: debian.common.conf"; exit 3; }}
step doctor
.venv/bin/aicommons doctor || {{ echo "MISSING after install.sh: doctor exited $?"; exit 3; }}
step up
# The README's first command, stopped at its plan: applying would change the host's kernel.
.venv/bin/aicommons up --yes --dry-run
test ! -e site.yaml || {{ echo "up --dry-run wrote site.yaml"; exit 3; }}
.venv/bin/aicommons init --users 2 --domain example.org --driver lxc -o /tmp/site.yaml >/dev/null
.venv/bin/aicommons validate -f /tmp/site.yaml
step install-test
bash scripts/install.sh --test
step suite
if [ "{suite}" = 1 ]; then
  AICOMMONS_NO_LXC=1 .venv/bin/python -m pytest -q -p no:cacheprovider -m "not e2e and not fresh and not install" \
    --ignore=tests/test_portal.py
fi
step done
"""


@pytest.mark.timeout(3600)  # debootstrap once, then apt, pip and the suite inside: tens of minutes
def test_readme_commands_on_a_fresh_debian(tmp_path: Path):
    started = time.monotonic()
    base = base_rootfs()
    built = time.monotonic() - started
    upper, work, root = tmp_path / "upper", tmp_path / "work", tmp_path / "root"
    for d in (upper, work, root):
        d.mkdir()
    dl = cache_dir()
    (dl / "apt-archives" / "partial").mkdir(parents=True, exist_ok=True)
    (dl / "pip").mkdir(exist_ok=True)
    suite = os.environ.get("AICOMMONS_FRESH_SUITE", "1")
    script = SCRIPT.format(tools=" ".join(TOOLS), suite=suite)
    (tmp_path / "run.sh").write_text(script)
    # Inside a private mount + PID namespace: every mount and process goes when it ends.
    outer = f"""
set -eu
mount -t overlay overlay -o lowerdir={base},upperdir={upper},workdir={work} {root}
mkdir -p {root}/root/aicommons {root}/var/cache/pip-downloads
cp -a {tmp_path}/repo/. {root}/root/aicommons/
cp /etc/resolv.conf {root}/etc/resolv.conf
# the machine's own trust: where egress passes a TLS-inspecting proxy, its CA is added here
# (ca-certificates, installed by install.sh, picks it up); a machine without one adds nothing
mkdir -p {root}/usr/local/share/ca-certificates
cp /usr/local/share/ca-certificates/*.crt {root}/usr/local/share/ca-certificates/ 2>/dev/null || true
printf '#!/bin/sh\\nexit 101\\n' > {root}/usr/sbin/policy-rc.d && chmod +x {root}/usr/sbin/policy-rc.d
mount --bind {dl}/apt-archives {root}/var/cache/apt/archives
mount --bind {dl}/pip {root}/var/cache/pip-downloads
# the driver's cache dir on the host's own filesystem, as on a real host: the overlay under this
# rootfs is a test artifact, and overlayfs cannot be idmapped (doctor's kernel probe says so)
mkdir -p {tmp_path}/cache {root}/var/cache/aicommons
mount --bind {tmp_path}/cache {root}/var/cache/aicommons
mount -t proc proc {root}/proc
mount --rbind /sys {root}/sys
mount --rbind /dev {root}/dev
mount -t tmpfs tmpfs {root}/tmp
cp {tmp_path}/run.sh {root}/tmp/run.sh
# pivot_root, not chroot: the kernel refuses new user namespaces to a chrooted process, and
# doctor's kernel probe (an idmapped mount) needs one, as the driver does
cd {root}
mkdir -p .host-root
pivot_root . .host-root
umount -l /.host-root
exec /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  TERM=dumb bash /tmp/run.sh
"""
    (tmp_path / "repo").mkdir()
    copy_repo(tmp_path / "repo")
    log = Path(os.environ.get("AICOMMONS_FRESH_LOG", tmp_path / "fresh.log"))
    print(f"output of the run inside: {log}")
    with open(log, "w") as f:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                            "sh", "-c", outer], stdout=f, stderr=subprocess.STDOUT, text=True, timeout=3500)
    out = log.read_text()
    print(f"rootfs: {'built' if built > 5 else 'cached'} in {built:.0f}s")
    marks = {m.split()[1]: int(m.split()[2]) for m in out.splitlines() if m.startswith("=== ")}
    steps = list(marks)
    for a, b in zip(steps, steps[1:], strict=False):
        print(f"{a}: {marks[b] - marks[a]}s")
    assert r.returncode == 0, out[-6000:]
    assert "present before install: lxc-start" not in out  # it really was bare
    assert "MISSING" not in out
    assert f"nothing missing: {len(NEEDS)} programs and packages checked" in out  # the doctor checked them all
    assert "preflight: this host has every program" in out and "plan: " in out and "to create" in out
    assert "done" in marks, out[-3000:]
    if suite == "1":
        assert " passed" in out and " failed" not in out, out[-3000:]
