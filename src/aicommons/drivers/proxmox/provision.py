"""Inside a container, through any ComputeDriver's exec/push: Docker, the user's bundle, health,
and shared services' catalog recipes. Nothing here is Proxmox-specific but the `pct` transport.
"""

from __future__ import annotations

import posixpath
import shlex
import time
from dataclasses import dataclass

from aicommons.catalog import load_catalog
from aicommons.catalog.model import Service
from aicommons.errors import PermanentError, TemporaryError

BUNDLE_ROOT = "/opt/aicommons"

# Docker's own apt repository: Debian 12's docker.io has no compose v2 plugin.
DOCKER_INSTALL = """set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q ca-certificates curl
install -m 0755 -d /etc/apt/keyrings
curl -fsSL https://download.docker.com/linux/debian/gpg -o /etc/apt/keyrings/docker.asc
chmod a+r /etc/apt/keyrings/docker.asc
echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian bookworm stable" > /etc/apt/sources.list.d/docker.list
apt-get update -q
apt-get install -y -q docker-ce docker-ce-cli containerd.io docker-compose-plugin
systemctl enable --now docker
"""


@dataclass(frozen=True)
class Check:
    name: str
    kind: str  # http | tcp
    port: int
    path: str = "/"


def _ok(res, what: str, ctid: int) -> None:
    if not res.ok:
        raise PermanentError(f"{what} in container {ctid} failed (rc {res.rc}): {(res.stderr or res.stdout).strip()[-400:]}")


def ensure_docker(driver, ctid: int) -> bool:
    """Install Docker + the compose plugin unless present (the template normally has them). True if installed now."""
    if driver.exec(ctid, ["docker", "compose", "version"], timeout=60).ok:
        return False
    _ok(driver.exec(ctid, ["sh", "-c", DOCKER_INSTALL], timeout=1200), "installing Docker", ctid)
    return True


def push_bundle(driver, ctid: int, files: dict, root: str) -> None:
    """`files`: relative path -> RenderedFile (content, mode), e.g. render_user(...) minus its `users/<u>/` prefix."""
    for rel, f in sorted(files.items()):
        driver.push(ctid, f.content.encode(), posixpath.join(root, rel), f.mode)


def compose_up(driver, ctid: int, root: str) -> None:
    res = driver.exec(ctid, ["docker", "compose", "--project-directory", root, "up", "-d", "--remove-orphans"], timeout=1800)
    _ok(res, "`docker compose up -d`", ctid)


def probe_argv(check: Check) -> list[str]:
    if check.kind == "http":
        return ["curl", "-fsS", "-o", "/dev/null", "--max-time", "5", f"http://127.0.0.1:{check.port}{check.path}"]
    return ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{int(check.port)}"]


def wait_healthy(driver, ctid: int, checks: list[Check], timeout: float = 600, poll: float = 5,
                 sleep=time.sleep) -> None:
    """Poll every check inside the container until all pass; name the ones that never did."""
    pending = list(checks)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [c for c in pending if not driver.exec(ctid, probe_argv(c), timeout=30).ok]
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(f"{c.name} (:{c.port}{c.path if c.kind == 'http' else ''})" for c in pending)
            raise TemporaryError(f"container {ctid}: not healthy after {timeout:g}s: {names}", delay=30)
        sleep(poll)


def app_checks(apps: list[str], ports: dict[str, int] | None = None) -> list[Check]:
    cat = load_catalog()
    out = []
    for name in apps:
        app = cat.apps[name]
        if app.health.type == "none":
            continue
        port = (ports or {}).get(name, app.port)
        out.append(Check(name, "http" if app.health.type == "http" else "tcp", port, app.health.path))
    return out


def provision_user(driver, ctid: int, user: str, apps: list[str], files: dict, *, ports=None,
                   timeout: float = 600, poll: float = 5, sleep=time.sleep) -> None:
    """Docker, the user's bundle in /opt/aicommons/<user>, `docker compose up -d`, then the apps' health."""
    root = posixpath.join(BUNDLE_ROOT, user)
    ensure_docker(driver, ctid)
    push_bundle(driver, ctid, files, root)
    compose_up(driver, ctid, root)
    wait_healthy(driver, ctid, app_checks(apps, ports), timeout, poll, sleep)


def install_service(driver, ctid: int, svc: Service, files: dict | None = None) -> None:
    """A shared service by its catalog recipe (install.method apt / script / compose)."""
    inst = svc.install
    if inst.method == "apt":
        pkgs = " ".join(shlex.quote(p) for p in inst.packages)
        script = f"set -eu\nexport DEBIAN_FRONTEND=noninteractive\napt-get update -q\napt-get install -y -q {pkgs}\n"
        _ok(driver.exec(ctid, ["sh", "-c", script], timeout=1800), f"installing {svc.name} (apt)", ctid)
    elif inst.method == "script":
        path = f"/root/aicommons-install-{svc.name}.sh"
        driver.push(ctid, inst.script.encode(), path, 0o700)
        _ok(driver.exec(ctid, ["sh", "-eu", path], timeout=3600), f"installing {svc.name} (script)", ctid)
    elif inst.method == "compose":
        root = posixpath.join(BUNDLE_ROOT, svc.name)
        ensure_docker(driver, ctid)
        push_bundle(driver, ctid, files or {}, root)
        if files:
            compose_up(driver, ctid, root)


