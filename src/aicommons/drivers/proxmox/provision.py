"""Docker inside a container, through the driver's exec (`pct exec` over SSH).

The user template normally has Docker already (made once by root, docs/proxmox.md); a container
that must run a compose bundle gets it installed here when it is missing. Everything else that
happens inside containers (bundles, `docker compose up`, service configuration) is the engine's
job, through the driver's exec/push: there is one path for it.
"""

from __future__ import annotations

from aicommons.errors import PermanentError

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


def ensure_docker(driver, ctid: int) -> bool:
    """Install Docker + the compose plugin unless present (the template normally has them). True if installed now."""
    if driver.exec(ctid, ["docker", "compose", "version"], timeout=60).ok:
        return False
    res = driver.exec(ctid, ["sh", "-c", DOCKER_INSTALL], timeout=1200)
    if not res.ok:
        raise PermanentError(f"installing Docker in container {ctid} failed (rc {res.rc}): "
                             f"{(res.stderr or res.stdout).strip()[-400:]}")
    return True
