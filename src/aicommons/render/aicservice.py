"""An aicommons service in its own container (the portal; any later `aicommons ...` server): the
files it runs from, the same on every driver (pure).

The runtime (this checkout's wheel on the hashed runtime lock, drivers/runtime.py) is a venv at
/opt/aicommons/runtime: bound read-only from the host's layer on LXC, installed in the
container from the pushed wheel and lock on Proxmox. The unit runs `python -m aicommons.cli
<command>` from it (a venv's interpreter finds its packages from where it is started; a
console-script shebang would name the build directory). Its settings come from
/etc/aicommons/<name>.env (0600, written by the driver/engine: it holds the secrets key):
AICOMMONS_SITE (the site file `-f` defaults to), AICOMMONS_STATE and the key.
"""

from __future__ import annotations

import shlex

from aicommons.catalog.model import Service
from aicommons.plan.access import proxy_source
from aicommons.plan.model import Container, ResolvedSite
from aicommons.plan.secrets import SITE_SCOPE, SecretLookup
from aicommons.spec.models import Site

MOUNT = "/opt/aicommons/runtime"
WHEEL_TAG = "py3-none-any"
ETC = "/etc/aicommons"
IN_SITE_ENV = "AICOMMONS_IN_SITE"  # set for a process that already runs on the site's network
WHEEL_REQ = "aicommons-wheel.txt"  # `aicommons @ file://… --hash=sha256:…`, pushed beside the wheel
LOCK_FILE = "requirements.lock"
DATABASE_ENV = "AICOMMONS_GATEWAY_DATABASE"  # gateway/site.py reads it


SITE_FILE = f"{ETC}/site.yaml"


def change_basis(svc: Service, resolved: ResolvedSite, path: str, data: bytes) -> bytes:
    """What decides whether a pushed file changed, and so whether the service restarts. The
    gateway reads from the site file only its own settings and where the models are: a person
    coming or going (the users list) must not restart it under everyone's streams."""
    if svc.name != "gateway" or path != SITE_FILE:
        return data
    import json

    from aicommons.plan.models import gateway_routes

    s = resolved.site
    return json.dumps({"name": s.name, "domain": s.domain, "gateway": s.gateway.model_dump(mode="json"),
                       "routes": gateway_routes(resolved)}, sort_keys=True).encode()


def restart_basis(svc: Service, resolved: ResolvedSite, data: bytes) -> bytes:
    """What of the site file the service takes once, at start: a change to it restarts the
    service; a change to the rest is only pushed. The portal reads the site file again whenever
    it changes (portal/site.py SiteView.resolved) except what it sets up at start (its driver,
    the secrets' key, the redactor), none of it in the users list: a person invited, from the
    portal's own page too, must not restart it under the job that invites them."""
    if svc.name != "portal":
        return change_basis(svc, resolved, SITE_FILE, data)
    import json

    return json.dumps(resolved.site.model_dump(mode="json", exclude={"users"}), sort_keys=True).encode()


def is_aicommons(svc: Service) -> bool:
    return svc.install.method == "aicommons"


def unit_name(svc: Service) -> str:
    return f"aicommons-{svc.name}.service"


def env_path(svc: Service) -> str:
    return f"{ETC}/{svc.name}.env"


def command(svc: Service, c: Container, site: Site) -> list[str]:
    """The catalog's `aicommons` command line for this container: `{ip}` is its address,
    `{proxy}` the address Traefik's connections come from (plan/access.py proxy_source)."""
    subst = {"ip": c.ip, "proxy": proxy_source(site)}
    return [part.format(**subst) for part in shlex.split(svc.install.command)]


def unit(svc: Service, c: Container, site: Site) -> str:
    argv = [f"{MOUNT}/bin/python", "-m", "aicommons.cli", *command(svc, c, site)]
    # Root in the container without a single capability: it can read its own 0600 env file and
    # the state (root's files on LXC, where the state is the host's), and nothing more.
    return (f"# Rendered by aicommons: {svc.title} in CT {c.ctid} ({c.ip}).\n"
            "[Unit]\n"
            f"Description={svc.title}\n"
            "After=network-online.target\n"
            "Wants=network-online.target\n"
            "[Service]\n"
            f"EnvironmentFile={env_path(svc)}\n"
            f"ExecStart={shlex.join(argv)}\n"
            "Restart=on-failure\n"
            "RestartSec=2\n"
            "NoNewPrivileges=yes\n"
            "CapabilityBoundingSet=\n"
            "AmbientCapabilities=\n"
            "PrivateTmp=yes\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n")


def own_env(svc: Service, resolved: ResolvedSite, secrets: SecretLookup) -> dict[str, str]:
    """Settings of a service's own in its env file, beside the site file (and state): the
    gateway's database login (its least-privilege role, render/gatewaydb.py)."""
    if svc.name == "gateway":
        from aicommons.render import gatewaydb

        return {DATABASE_ENV: gatewaydb.conninfo(resolved, secrets(SITE_SCOPE, gatewaydb.PASSWORD_KEY))}
    return {}


def env_file(values: dict[str, str]) -> str:
    """systemd's EnvironmentFile: one KEY=value a line, the value double-quoted and escaped."""
    lines = ["# aicommons service settings: the secrets key is here (0600, never printed)."]
    for k, v in sorted(values.items()):
        if not k.replace("_", "").isalnum() or "\n" in v:
            raise ValueError(f"environment entry {k!r} cannot be written to an EnvironmentFile")
        esc = v.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{k}="{esc}"')
    return "\n".join(lines) + "\n"


def install_script(svc: Service, c: Container, site: Site) -> str:
    """Proxmox: the runtime venv made in the container from the wheel and lock the engine pushed
    to /opt/aicommons/<hostname>/ (never a registry name for aicommons), then the unit, started.
    A new venv is built beside the old one and swapped in, so a failed install keeps the old."""
    root = f"/opt/aicommons/{c.hostname}"
    pip = '"$new/bin/python" -m pip --disable-pip-version-check --no-input'
    flags = "--no-deps --require-hashes --only-binary :all:"
    return "\n".join([
        "#!/bin/sh",
        f"# Install {svc.title} in CT {c.ctid} ({c.ip}) from this site's own wheel. Rendered by aicommons.",
        "set -eu",
        "export DEBIAN_FRONTEND=noninteractive",
        "if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then",
        "  apt-get update -qq",
        "  apt-get install -y -qq python3-venv",
        "fi",
        f"new={MOUNT}.new",
        'rm -rf "$new"',
        'python3 -m venv "$new"',
        f"{pip} install -q {flags} -r {root}/{LOCK_FILE}",
        f"{pip} install -q {flags} -r {root}/{WHEEL_REQ}",
        f"{pip} check",
        # Run as `bin/python -m`, so the venv works wherever it was built: swapped in whole.
        f'rm -rf {MOUNT}.old; [ ! -d {MOUNT} ] || mv {MOUNT} {MOUNT}.old; mv "$new" {MOUNT}; rm -rf {MOUNT}.old',
        f"install -d -m 0700 {ETC}",
        f"install -m 0644 {root}/{unit_name(svc)} /etc/systemd/system/{unit_name(svc)}",
        "systemctl daemon-reload",
        f"systemctl enable --quiet {unit_name(svc)}",
        f"systemctl restart {unit_name(svc)}",
    ]) + "\n"
