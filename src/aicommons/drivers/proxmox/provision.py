"""Docker inside a container, through the driver's exec (`pct exec` over SSH).

The user template normally has Docker already (made once by root, docs/proxmox.md); a container
that must run a compose bundle gets it installed here when it is missing. Either way the container
is ready only once Docker has *started a container* (`DOCKER_PROBE`): `docker compose version`
passes on a Docker that cannot start anything, and the failure then surfaces at `compose up`.
Everything else that happens inside containers (bundles, `docker compose up`, service
configuration) is the engine's job, through the driver's exec/push: there is one path for it.

Why pinned: runc 1.3.3 (the CVE-2025-52881 fix, shipped in Docker's containerd.io 1.7.28-2 and
later) reopens /proc/sys files through a path the LXC AppArmor profile of an unprivileged
container denies, so every `docker run` fails at container init with `open sysctl
net.ipv4.ip_unprivileged_port_start file: reopen fd 8: permission denied` (opencontainers/runc
#4968 and #4972, containerd/containerd#12484, moby/moby#51405: Proxmox unprivileged CTs with
nesting=1,keyctl=1; 1.7.28-1 works; fixed on the LXC side only by a newer generated AppArmor
profile, lxc/lxc#4630). So the install pins the last versions before it and holds them against
`apt upgrade`; moving the pins is a deliberate change, proved by the probe on a real node. The
pinned runc lacks the CVE-2025-31133/-52565/-52881 fixes: move forward once the nodes' lxc-pve
allows runc 1.3.3 (docs/proxmox.md).
"""

from __future__ import annotations

from aicommons.errors import PermanentError

# Docker's apt repository for Debian 12 (the OS template): Debian's own docker.io has no compose v2
# plugin. The versions released before runc 1.3.3 reached containerd.io (see above).
DOCKER_PINS = {
    "docker-ce": "5:28.5.1-1~debian.12~bookworm",
    "docker-ce-cli": "5:28.5.1-1~debian.12~bookworm",
    "containerd.io": "1.7.28-1~debian.12~bookworm",  # bundles runc 1.3.0; 1.7.28-2 brings 1.3.3
    "docker-compose-plugin": "2.40.0-1~debian.12~bookworm",
}

DOCKER_INSTALL = """set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q ca-certificates curl
install -m 0755 -d /etc/apt/keyrings
curl -fsSL https://download.docker.com/linux/debian/gpg -o /etc/apt/keyrings/docker.asc
chmod a+r /etc/apt/keyrings/docker.asc
echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian bookworm stable" > /etc/apt/sources.list.d/docker.list
apt-get update -q
apt-get install -y -q --allow-downgrades --allow-change-held-packages {pinned}
apt-mark hold {names}
systemctl enable --now docker
""".format(pinned=" ".join(f"{p}={v}" for p, v in DOCKER_PINS.items()), names=" ".join(DOCKER_PINS))

PROBE_IMAGE = "aicommons/probe:1"
# A real container start, without a registry: an image made from the container's own /usr/bin/true
# and the libraries it links (`docker import`), run on the default bridge network as compose
# services are (runc's init sets the network namespace's sysctls there: where runc 1.3.3 fails).
DOCKER_PROBE = f"""set -eu
docker compose version >/dev/null
if ! docker image inspect {PROBE_IMAGE} >/dev/null 2>&1; then
  libs=$(ldd /usr/bin/true | grep -o '/[^ ]*' | sed 's|^/||')
  # shellcheck disable=SC2086 # one word per library path
  tar -C / -chf - usr/bin/true $libs | docker import - {PROBE_IMAGE} >/dev/null
fi
docker run --rm {PROBE_IMAGE} /usr/bin/true
"""


def _versions(driver, ctid: int) -> str:
    res = driver.exec(ctid, ["dpkg-query", "-W", *DOCKER_PINS], timeout=60)
    return " ".join(res.stdout.split()) if res.ok else "unknown"


def ensure_docker(driver, ctid: int) -> bool:
    """Install the pinned Docker + compose plugin unless present, then start a real container.
    True if installed now. A Docker that cannot start a container is a permanent error naming
    the cause and the fix."""
    installed = False
    if not driver.exec(ctid, ["docker", "compose", "version"], timeout=60).ok:
        res = driver.exec(ctid, ["sh", "-c", DOCKER_INSTALL], timeout=1200)
        if not res.ok:
            raise PermanentError(f"installing Docker in container {ctid} failed (rc {res.rc}): "
                                 f"{(res.stderr or res.stdout).strip()[-400:]}")
        installed = True
    res = driver.exec(ctid, ["sh", "-c", DOCKER_PROBE], timeout=300)
    if not res.ok:
        err = (res.stderr or res.stdout).strip()[-400:]
        hint = ""
        if "ip_unprivileged_port_start" in err or "reopen fd" in err:
            hint = (" This is runc 1.3.3 (containerd.io 1.7.28-2 or later) under the LXC AppArmor profile of an "
                    "unprivileged container (opencontainers/runc#4968): install the pinned versions in the "
                    f"template ({' '.join(f'{p}={v}' for p, v in DOCKER_PINS.items())}; docs/proxmox.md), "
                    "or update the node's lxc-pve to one whose AppArmor profile allows it.")
        raise PermanentError(f"Docker in container {ctid} cannot start a container (`docker run --rm "
                             f"{PROBE_IMAGE}`; installed: {_versions(driver, ctid)}): {err}.{hint}")
    return installed
