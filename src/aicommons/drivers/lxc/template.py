"""The Debian 12 rootfs every container is an overlay snapshot of: built once, cached, read-only.

Built with debootstrap from the site's mirror, brought up to date from bookworm-updates and
Debian's security archive, then the Debian packages of every `apt` recipe in the catalog are
installed into it with chroot (services left disabled), so a shared service
comes up in seconds and the e2e test does not download PostgreSQL three times. The same apt
sources stay in the rootfs, so `apt-get upgrade` inside a container takes Debian's fixes. The
directory name is a hash of the apt sources and package list: a changed list builds a new template beside the
old one instead of changing files under live overlays. A build happens in a temporary
directory and is renamed into place only when complete; `ready` marks a finished build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from pathlib import Path

from aicommons.catalog import load_catalog
from aicommons.drivers.lxc import netns
from aicommons.drivers.lxc.run import run
from aicommons.errors import AicError, PermanentError

SUITE = "bookworm"
# What every container gets: systemd as init, the tools the control plane and the tests use.
BASE = ["systemd-sysv", "iproute2", "procps", "netbase", "ca-certificates", "python3",
        "postgresql-client-15", "redis-tools", "less"]
def _private(argv: list[str]) -> list[str]:
    """In the host's network (DNS, the mirror: this process may have joined the site's namespace)
    and a private mount namespace (debootstrap's /proc and /sys mounts vanish with it, even if killed)."""
    return netns.host(["unshare", "--mount", "--propagation", "private", *argv])
SERVICE_UNITS = ["postgresql", "redis-server", "prometheus", "prometheus-node-exporter", "nginx",
                 "lemonldap-ng-fastcgi-server"]


def apt_packages() -> list[str]:
    cat = load_catalog()
    pkgs = {p for s in cat.services.values() if s.install.method == "apt" for p in s.install.packages}
    return sorted(pkgs)


def sources(mirror: str, security: str) -> str:
    """The rootfs's apt sources: the release, its updates and its security fixes."""
    return (f"deb {mirror} {SUITE} main\n"
            f"deb {mirror} {SUITE}-updates main\n"
            f"deb {security} {SUITE}-security main\n")


def template_id(mirror: str, security: str, packages: list[str]) -> str:
    h = hashlib.sha256(json.dumps([SUITE, sources(mirror, security), BASE, packages]).encode()).hexdigest()[:12]
    return f"{SUITE}-{h}"


def template_dir(cache_dir: str, mirror: str, security: str) -> Path:
    return Path(cache_dir) / "templates" / template_id(mirror, security, apt_packages())


def check(tdir: Path) -> str | None:
    """Why this template cannot be used (None = usable)."""
    stamp = tdir / "ready"
    if not tdir.exists():
        return f"template {tdir} has not been built"
    try:
        json.loads(stamp.read_text())
    except (OSError, ValueError):
        return f"template {tdir} is incomplete or damaged (no valid {stamp.name} stamp)"
    if not (tdir / "rootfs" / "sbin" / "init").exists():
        return f"template {tdir} is damaged: rootfs/sbin/init is missing"
    return None


_FAILED: dict[Path, str] = {}  # a build that failed in this process is not retried by every thread


def ensure(cache_dir: str, mirror: str, security: str, log=print) -> Path:
    """Return the template directory, building it first if needed (one builder at a time)."""
    tdir = template_dir(cache_dir, mirror, security)
    if check(tdir) is None:
        return tdir
    if tdir in _FAILED:
        raise PermanentError(f"the template build failed earlier in this run: {_FAILED[tdir]}")
    tdir.parent.mkdir(parents=True, exist_ok=True)
    with open(tdir.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if check(tdir) is None:
            return tdir
        if tdir.exists():
            # A damaged template is only replaced if no container sits on it (overlay lower dir).
            users = _users_of(tdir)
            if users:
                raise PermanentError(
                    f"{check(tdir)}; containers {', '.join(users)} are overlays of it. Run "
                    "`aicommons down` (or destroy those containers), then re-run to rebuild it.")
            shutil.rmtree(tdir)
        try:
            _build(tdir, mirror, security, log)
        except AicError as exc:
            _FAILED[tdir] = str(exc)
            raise PermanentError(f"building the Debian 12 template in {tdir.parent} failed (a re-run resumes "
                                 f"it): {exc}") from None
    return tdir


def _users_of(tdir: Path) -> list[str]:
    root = str(tdir / "rootfs")
    found = []
    for link in tdir.glob("users/*"):
        cfg = Path(link.read_text().strip()) if link.is_file() else None
        if cfg and cfg.exists() and root in cfg.read_text():
            found.append(link.name)
    return found


def register_user(tdir: Path, ctid: int, config_path: Path) -> None:
    (tdir / "users").mkdir(exist_ok=True)
    (tdir / "users" / str(ctid)).write_text(str(config_path))


def _build(tdir: Path, mirror: str, security: str, log) -> None:
    tmp = tdir.with_name(tdir.name + ".building")
    rootfs = tmp / "rootfs"
    started = time.monotonic()
    # Stages resume: an interrupted build keeps a finished debootstrap and redoes only the rest.
    if not (tmp / "debootstrap.done").exists():
        if tmp.exists():
            shutil.rmtree(tmp)
        log(f"building the Debian 12 template with debootstrap from {mirror} (once; cached in {tdir})")
        run(_private(["debootstrap", "--variant=minbase", f"--include={','.join(BASE)}", SUITE, str(rootfs),
                      mirror]), timeout=1800, temporary=True)
        (tmp / "debootstrap.done").write_text("")
    wanted = apt_packages()
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")  # no service starts inside the chroot
    policy.chmod(0o755)
    chroot = _private(["sh", "-c", f"mount -t proc proc {rootfs}/proc && exec chroot {rootfs} \"$@\"", "-"])
    (rootfs / "etc/apt/sources.list").write_text(sources(mirror, security))
    run([*chroot, "apt-get", "update", "-qq"], timeout=600, temporary=True)
    # debootstrap installs the release's versions: take what updates and security have fixed since
    run([*chroot, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "dist-upgrade", "-y", "-qq"],
        timeout=1800, temporary=True)
    have = run([*chroot, "sh", "-c", "for p; do apt-cache show --no-all-versions \"$p\" >/dev/null 2>&1 "
                "&& echo \"$p\"; done", "-", *wanted]).stdout.decode().split()
    missing = [p for p in wanted if p not in have]
    if missing:
        log(f"not in this Debian mirror, left out of the template: {' '.join(missing)}")
    log(f"installing {' '.join(have)} into the template")
    run([*chroot, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
         "--no-install-recommends", *have], timeout=1800, temporary=True)
    run([*chroot, "apt-get", "clean"])
    policy.unlink()
    run(["systemctl", f"--root={rootfs}", "disable", "--quiet", *SERVICE_UNITS], check=False)
    # Units that make no sense in a container and slow its boot.
    run(["systemctl", f"--root={rootfs}", "mask", "--quiet", "systemd-timesyncd.service",
         "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_reap.service"], check=False)
    (tmp / "ready").write_text(json.dumps({"suite": SUITE, "mirror": mirror, "security": security,
                                           "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                           "packages": have,
                                           "unavailable": missing,
                                           "seconds": round(time.monotonic() - started)}))
    tmp.rename(tdir)
    log(f"template ready in {time.monotonic() - started:.0f}s")


def unavailable(tdir: Path) -> list[str]:
    """Catalog packages the mirror does not have (recorded when the template was built)."""
    try:
        return json.loads((tdir / "ready").read_text()).get("unavailable", [])
    except (OSError, ValueError):
        return []
