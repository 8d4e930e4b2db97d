"""Shared services by catalog recipe, inside their LXC containers.

`apt` recipes run for real: the packages are in the cached template already (installed there
once with chroot) or are installed now with apt through the namespace's NAT. Then the service
is configured to listen on its container IP and started with systemd. A recipe that needs
downloads from outside Debian's mirror (upstream binaries, container images) cannot run on this
host: it is reported as `skipped` with that reason, never left silently missing.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from dataclasses import dataclass
from typing import Literal

from aicommons.catalog.model import Service
from aicommons.drivers.lxc import aicservice
from aicommons.errors import AicError, PermanentError
from aicommons.plan.deployed import lxc_unsupported
from aicommons.plan.model import Container
from aicommons.plan.secrets import SITE_SCOPE, SecretLookup
from aicommons.render.aicservice import is_aicommons, unit_name

PG_CONF = "/etc/postgresql/15/main"
RENDERED_HEAD = "# Rendered by aicommons"  # render/services.py HEAD


@dataclass(frozen=True)
class ServiceOutcome:
    service: str
    ctid: int
    status: Literal["installed", "skipped", "failed"]
    reason: str = ""


def unsupported(svc: Service) -> str | None:
    """Why this host cannot install the service (None = it can)."""
    return lxc_unsupported(svc)


def skipped_services(resolved) -> dict[str, str]:
    """Services of the site this driver cannot install, with the reason (pure: catalog only)."""
    from aicommons.catalog import load_catalog

    cat = load_catalog()
    out = {}
    for c in resolved.containers:
        for name in c.services if c.role == "shared" else ():
            reason = unsupported(cat.services[name]) if name in cat.services else None
            if reason:
                out[name] = reason
    return out


def ensure(driver, c: Container, svc: Service, secrets: SecretLookup) -> ServiceOutcome:
    """Install, configure and start one service in its (running) container; idempotent."""
    reason = unsupported(svc)
    if reason:
        return ServiceOutcome(svc.name, c.ctid, "skipped", reason)
    try:
        # Packages the template build found missing from the mirror are not asked for again.
        known = set(driver.unavailable_packages()) & set(svc.install.packages)
        absent = sorted(known) + _apt(driver, c.ctid, [p for p in svc.install.packages if p not in known])
        if is_aicommons(svc):  # the portal: from the runtime layer bound into the container
            aicservice.ensure(driver, c, svc, _put_if_changed)
        CONFIGURE.get(svc.name, _nothing)(driver, c, secrets)
        if svc.name not in WAITS_ITSELF:
            _wait_listening(driver, c, [p.port for p in svc.ports])
    except AicError as exc:
        return ServiceOutcome(svc.name, c.ctid, "failed", str(exc))
    note = f"without {', '.join(absent)} (not in this Debian mirror)" if absent else ""
    return ServiceOutcome(svc.name, c.ctid, "installed", note)


def _apt(driver, ctid: int, packages: list[str]) -> list[str]:
    """Install what is missing; return the packages this Debian mirror does not have."""
    names = " ".join(shlex.quote(p) for p in packages)
    missing = driver.exec(ctid, ["sh", "-c", f"for p in {names}; do dpkg-query -W -f='${{Status}}\\n' $p "
                                 "2>/dev/null | grep -q 'ok installed' || echo $p; done"]).stdout.split()
    if not missing:
        return []
    # Not in the template: apt inside the container, through the namespace's NAT to the mirror.
    driver.sh(ctid, "apt-get update -qq", timeout=600)
    have = driver.exec(ctid, ["sh", "-c", "for p; do apt-cache show --no-all-versions \"$p\" >/dev/null 2>&1 "
                                          "&& echo \"$p\"; done", "-", *missing]).stdout.split()
    if have:
        driver.sh(ctid, "export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq --no-install-recommends "
                        + " ".join(map(shlex.quote, have)), timeout=1200)
    return [p for p in missing if p not in have]


def _put_if_changed(driver, ctid: int, path: str, text: str, mode: int = 0o644, owner: str = "") -> bool:
    want = hashlib.sha256(text.encode()).hexdigest()
    have = driver.exec(ctid, ["sh", "-c", f"sha256sum {shlex.quote(path)} 2>/dev/null | cut -d' ' -f1"]).stdout.strip()
    if have == want:
        return False
    driver.push(ctid, text.encode(), path, mode)
    if owner:
        driver.sh(ctid, f"chown {shlex.quote(owner)} {shlex.quote(path)}")
    return True


def _start(driver, ctid: int, units: list[str], restart: bool) -> None:
    u = " ".join(units)
    driver.sh(ctid, f"systemctl enable --quiet {u}; systemctl {'restart' if restart else 'start'} {u}", timeout=120)


def _nothing(driver, c: Container, secrets: SecretLookup) -> None:
    pass


def _rendered(driver, ctid: int, path: str) -> bool:
    """The engine has delivered the site's rendered file there (it then owns it, not this recipe)."""
    head = driver.exec(ctid, ["sh", "-c", f"head -c 200 {shlex.quote(path)} 2>/dev/null"]).stdout
    return head.startswith(RENDERED_HEAD)


def _postgres(driver, c: Container, secrets: SecretLookup) -> None:
    """Start PostgreSQL reachable by the control plane only. Tenants and shared services are let in
    by the site's rendered pg_hba.conf (render/services.py), which the engine delivers next, as on
    every driver; this recipe never writes over it."""
    conf = (f"listen_addresses = 'localhost,{c.ip}'\npassword_encryption = 'scram-sha-256'\n")
    hba = ("# aicommons bootstrap: the superuser only; replaced by the site's rendered pg_hba.conf.\n"
           "local all postgres peer\n"
           "host all postgres 127.0.0.1/32 scram-sha-256\n"
           f"host all postgres {c.gateway}/32 scram-sha-256\n")
    changed = False
    for path, text, mode, owner in ((f"{PG_CONF}/conf.d/aicommons.conf", conf, 0o644, ""),
                                    (f"{PG_CONF}/pg_hba.conf", hba, 0o640, "postgres:postgres")):
        if not _rendered(driver, c.ctid, path):
            changed |= _put_if_changed(driver, c.ctid, path, text, mode, owner)
    _start(driver, c.ctid, ["postgresql", UNITS["postgres"]], changed)
    _wait_listening(driver, c, [5432])
    pw = secrets(SITE_SCOPE, "postgres_admin_password").replace("'", "''")
    # Through stdin, so the password is never on a command line.
    driver.sh(c.ctid, "runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -f -",
              stdin=f"ALTER ROLE postgres PASSWORD '{pw}';\n".encode())


def _redis(driver, c: Container, secrets: SecretLookup) -> None:
    """Start Redis with the admin user only; the rendered redis.conf and users.acl (tenants'
    rules from tenancy/redis.py) are delivered by the engine, as on every driver."""
    if _rendered(driver, c.ctid, "/etc/redis/redis.conf"):
        _start(driver, c.ctid, ["redis-server"], False)
        return
    conf = (f"bind {c.ip} 127.0.0.1\naclfile /etc/redis/users.acl\nmaxmemory-policy noeviction\n")
    digest = hashlib.sha256(secrets(SITE_SCOPE, "redis_admin_password").encode()).hexdigest()
    acl = f"user default off\nuser admin on #{digest} ~* &* +@all\n"
    have = driver.exec(c.ctid, ["sh", "-c", "test -s /etc/redis/users.acl && echo yes"]).stdout.strip()
    changed = _put_if_changed(driver, c.ctid, "/etc/redis/aicommons.conf", conf, 0o640, "redis:redis")
    if have != "yes":  # users saved since (ACL SAVE) are the server's; the bootstrap only starts it
        changed |= _put_if_changed(driver, c.ctid, "/etc/redis/users.acl", acl, 0o640, "redis:redis")
    driver.sh(c.ctid, "grep -qx 'include /etc/redis/aicommons.conf' /etc/redis/redis.conf || "
                      "echo 'include /etc/redis/aicommons.conf' >> /etc/redis/redis.conf")
    _start(driver, c.ctid, ["redis-server"], changed)


def _models(driver, c: Container, secrets: SecretLookup) -> None:
    from aicommons.drivers.lxc import models

    models.configure(driver, c, secrets)


def _prometheus(driver, c: Container, secrets: SecretLookup) -> None:
    _start(driver, c.ctid, ["prometheus", "prometheus-node-exporter"], False)


def _lemonldap(driver, c: Container, secrets: SecretLookup) -> None:
    """Start nginx and the FastCGI server. The site's rendered configuration (render/lemonldap.py:
    lmConf, the handler subclass, nginx's server) is delivered by the engine next and applied by
    the catalog's `configure.apply`; until then nginx answers with Debian's default site."""
    _start(driver, c.ctid, ["nginx", "lemonldap-ng-fastcgi-server"], False)


# The systemd unit that is the service (postgresql.service is a wrapper that stays "active").
UNITS = {"postgres": "postgresql@15-main", "redis": "redis-server", "prometheus": "prometheus",
         "lemonldap": "lemonldap-ng-fastcgi-server"}
CONFIGURE = {"postgres": _postgres, "redis": _redis, "prometheus": _prometheus, "lemonldap": _lemonldap,
             "llama-server": _models}
# Recipes that wait for their own ports (llama-server listens on one port per model it serves).
WAITS_ITSELF = {"llama-server"}


def unit_of(service: str) -> str | None:
    """The unit whose being active means the service runs (None: none to check)."""
    from aicommons.catalog import load_catalog

    svc = load_catalog().services.get(service)
    if svc is not None and is_aicommons(svc):
        return unit_name(svc)
    return UNITS.get(service)


def _wait_listening(driver, c: Container, ports: list[int], timeout: float = 90) -> None:
    probe = ("import socket,sys\nfor p in sys.argv[2:]:\n"
             "    socket.create_connection((sys.argv[1], int(p)), timeout=2).close()\n")
    wait_inside(driver, c, probe, ports, timeout, f"nothing listens on {c.ip} port(s) {', '.join(map(str, ports))}")


def wait_inside(driver, c: Container, probe: str, ports: list[int], timeout: float, failing: str) -> None:
    """Run a Python `probe` (argv: the container's address, then the ports) inside the container
    once a second until it succeeds; after `timeout`, fail saying what was `failing`."""
    deadline = time.monotonic() + timeout
    while True:
        res = driver.exec(c.ctid, ["python3", "-c", probe, c.ip, *map(str, ports)], timeout=60)
        if res.ok:
            return
        if time.monotonic() > deadline:
            raise PermanentError(f"container {c.ctid} ({c.name}): {failing} after {timeout:.0f}s; see `journalctl` "
                                 f"inside (lxc-attach -n {c.ctid})")
        time.sleep(1)
