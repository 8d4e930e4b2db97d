"""An aicommons service (the portal) in its LXC container, run from the runtime layer.

The layer (drivers/runtime.py: this checkout's wheel on the hashed runtime lock) is bound
read-only at /opt/aicommons/runtime. The service works on the operator's own site: the site
file's directory is bound read-only at /etc/aicommons/site (a directory, not the file: `users
add` replaces site.yaml by rename, which a bound file would never see), and an SQLite state's
directory read-write at /var/lib/aicommons/state — the same file the host's `aicommons` uses;
SQLite's locks and WAL work across bind mounts of one file system, and the containers are
privileged (one uid space), so no file changes owner. A postgresql:// state is used as given.
The unit runs as root without any capability (render/aicservice.py): it reads its 0600 env file
and writes root's state, and can do nothing a capability would allow.

From inside its container the service cannot drive the host's LXC (lxc-start, the site's
namespace): changes to the site's containers run on the host; this driver says so when asked.
"""

from __future__ import annotations

import posixpath
import shlex
from pathlib import Path

from aicommons.catalog import load_catalog
from aicommons.catalog.model import Service
from aicommons.drivers.base import ControlPlane
from aicommons.errors import PermanentError
from aicommons.plan import resolve
from aicommons.plan.model import Container
from aicommons.render import aicservice as R

SITE_MOUNT = "/etc/aicommons/site"
STATE_MOUNT = "/var/lib/aicommons/state"


def services_of(c: Container) -> list[Service]:
    cat = load_catalog()
    return [cat.services[n] for n in c.services if n in cat.services and R.is_aicommons(cat.services[n])]


def mounts(c: Container, cache_dir: str, control: ControlPlane | None, log, stage: Path) -> list[tuple[str, str, str]]:
    """(host dir, path inside, ro|rw) for a shared container running an aicommons service; the
    control plane's directories come from their staged paths under `stage` (control_binds)."""
    if c.role != "shared" or not services_of(c):
        return []
    if control is None:
        raise PermanentError(f"container {c.ctid} runs {', '.join(s.name for s in services_of(c))}, which needs "
                             "the site file and state; the driver was given none (bind_control)")
    from aicommons.drivers import runtime

    out = [(str(runtime.ensure_layer(cache_dir, log)), R.MOUNT, "ro")]
    state = any(s.install.state for s in services_of(c))
    out += [(staged, inside, how) for _real, staged, inside, how in control_binds(control, stage, state)]
    return out


def control_binds(control: ControlPlane, stage: Path, state: bool = True) -> list[tuple[str, str, str, str]]:
    """(host dir, its staged path under the container's directory, path inside, ro|rw): the site
    file's directory and the SQLite state's. LXC attaches an idmapped mount as the container's
    root, which must be able to pass every parent of its source: a site kept under /root (0700)
    could not be bound. prestart.py binds each real directory onto its staged path (inside the
    driver's lxcpath, which is searchable) in its private mount namespace, and LXC binds from there."""
    out = [(str(control.site_file.parent), str(stage / "site"), SITE_MOUNT, "ro")]
    if state and not control.state_is_url:  # `state: false` (the gateway): the site file only
        out.append((posixpath.dirname(control.state), str(stage / "state"), STATE_MOUNT, "rw"))
    return out


def runs_aicommons(meta: dict) -> bool:
    cat = load_catalog()
    return meta.get("role") == "shared" and any(
        n in cat.services and R.is_aicommons(cat.services[n]) for n in meta.get("services", []))


def stale_runtime(meta: dict, config_text: str) -> bool:
    """The container runs an older runtime layer than this checkout's (a changed checkout): the
    driver then restarts it with the new one (mounts are set at start)."""
    if not runs_aicommons(meta):
        return False
    from aicommons.drivers import runtime

    want = runtime.current_layer_name()
    if want is None:
        return False
    inside = R.MOUNT.lstrip("/")
    have = [ln.split()[2] for ln in config_text.splitlines()
            if ln.startswith("lxc.mount.entry") and len(ln.split()) > 3 and ln.split()[3] == inside]
    return not have or posixpath.basename(have[0]) != want


def env(svc: Service, control: ControlPlane, own: dict[str, str] | None = None) -> dict[str, str]:
    """Its env file: the site file, and the state and secrets key only for a service that works on
    the state (`install.state`); `own`: its settings of its own (the gateway's database login)."""
    site = {"AICOMMONS_SITE": posixpath.join(SITE_MOUNT, control.site_file.name), R.IN_SITE_ENV: "1", **(own or {})}
    if not svc.install.state:
        return site
    state = control.state if control.state_is_url else posixpath.join(STATE_MOUNT, posixpath.basename(control.state))
    return {**site, "AICOMMONS_STATE": state, **control.key_env()}


def ensure(driver, c: Container, svc: Service, put) -> None:
    """Its env file (0600) and unit in place, enabled and (re)started when either changed.
    `put(driver, ctid, path, text, mode)` writes a file only when it differs (services.py)."""
    if driver.control is None:
        raise PermanentError(f"{svc.name}: the driver was given no site file and state (bind_control)")
    site = driver.site_spec
    if site is None:
        raise PermanentError(f"{svc.name}: the driver was not made from a site file (LxcDriver.from_site)")
    own = R.own_env(svc, resolve(site), driver.secrets) if driver.secrets is not None else {}
    changed = put(driver, c.ctid, R.env_path(svc), R.env_file(env(svc, driver.control, own)), 0o600)
    changed |= put(driver, c.ctid, f"/etc/systemd/system/{R.unit_name(svc)}", R.unit(svc, c, site), 0o644)
    u = shlex.quote(R.unit_name(svc))
    driver.sh(c.ctid, f"chmod 0700 {R.ETC}; systemctl daemon-reload; systemctl enable --quiet {u}; "
                      f"systemctl {'restart' if changed else 'start'} {u}", timeout=120)
