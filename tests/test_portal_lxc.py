"""The portal in its own LXC container, run from the aicommons runtime layer built from this checkout.

Real: the runtime layer (a venv by Debian's python3, the hashed runtime lock and this checkout's
wheel installed with --require-hashes; built once under the driver's cache dir), one LXC
container at 10.0.5.129 in a network namespace of this module's own, the layer bound read-only,
the site directory bound read-only and the SQLite state's directory read-write, the systemd
unit, `aicommons serve` answering /healthz on the container's address, identity headers
believed only from Traefik's source address on LXC (the bridge's 10.0.5.1). Nothing is
simulated; only the portal's container is made (no whole site: the status sweep finds the
other services down, which the page shows and /healthz does not depend on).
Skipped only when this host cannot run LXC at all.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from aicommons.drivers.base import ControlPlane
from aicommons.drivers.lxc.driver import LxcDriver
from aicommons.plan import resolve
from aicommons.state.secrets import KeySource
from aicommons.state.store import StateStore
from tests.test_lxc_driver import lxc_unavailable

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(lxc_unavailable() is not None, reason=f"LXC cannot run: {lxc_unavailable()}")]

NS = f"aicp{os.getpid() % 100000}"


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    from aicommons.spec.load import load_site

    # The site under pytest's 0700 temp dir, as a site under /root would be: the driver stages its
    # directory under the (searchable) lxcpath for LXC's idmapped bind (aicservice.control_binds).
    where = tmp_path_factory.mktemp("site")
    lxcpath = Path(tempfile.mkdtemp(prefix=f"{NS}-", dir="/var/tmp"), "lxc")  # unprivileged: searchable parents
    lxcpath.parent.chmod(0o755)
    site_file = where / "site.yaml"
    site_file.write_text(yaml.safe_dump({
        "version": 1, "name": "portaltest", "domain": "example.org",
        "driver": {"kind": "lxc", "netns": NS, "lxcpath": str(lxcpath)},
        "services": {"postgres": {}, "ollama": {}, "portal": {}},
        "user_template": {"apps": ["jupyter"], "runtime": "native"},
        "users": [{"name": "alice", "email": "alice@example.org"}]}, sort_keys=False))
    site, _ = load_site(site_file)
    state_file = where / ".aicommons" / "state.db"
    store = StateStore.open(state_file)
    keys = KeySource(key_file=where / ".aicommons" / "secret.key")
    store.secrets(keys).get("portal", "session_key")  # the state and key exist, as after an apply
    drv = LxcDriver.from_site(site, log=print, traefik_dir=None, join=False, owner=str(where),
                              secrets=lambda scope, key: "unused")
    drv.bind_control(ControlPlane(site_file.resolve(), str(state_file), lambda: keys.export(store)))
    c = next(c for c in resolve(site).containers if c.name == "portal")
    try:
        drv.create(c)
        drv.start(c.ctid)
        drv.wait_ready(c.ctid, timeout=300)  # installs the portal's unit, waits until it listens
        yield {"drv": drv, "ct": c, "where": where, "key": keys.export(store)}
    finally:
        store.close()
        drv.down()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", NS, "curl", "-sS", "--max-time", "10", *args],
                          capture_output=True, text=True)


def test_portal_answers_on_its_address_from_the_read_only_layer(portal):
    drv, c = portal["drv"], portal["ct"]
    assert drv.outcomes["portal"].status == "installed", drv.outcomes["portal"].reason
    r = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{c.ip}:8080/healthz")
    assert r.stdout == "200", r.stderr
    ps = drv.exec(c.ctid, ["ps", "-eo", "user:12,args"]).stdout
    assert re.search(r"^root +/opt/aicommons/runtime/bin/python -m aicommons\.cli serve --listen "
                     r"10\.0\.5\.129:8080 --trusted-proxy 10\.0\.5\.1$", ps, re.M), ps
    mounts = drv.exec(c.ctid, ["cat", "/proc/mounts"]).stdout
    assert re.search(r" /opt/aicommons/runtime \S+ ro[, ]", mounts), mounts
    assert re.search(r" /etc/aicommons/site \S+ ro[, ]", mounts), mounts
    assert re.search(r" /var/lib/aicommons/state \S+ rw[, ]", mounts), mounts
    # the layer cannot be written from inside, even by root
    assert not drv.exec(c.ctid, ["touch", "/opt/aicommons/runtime/x"]).ok
    # the unit runs without capabilities; its env file (the key) is root's alone
    caps = drv.exec(c.ctid, ["sh", "-c", "grep CapEff /proc/$(systemctl show -p MainPID --value "
                                         "aicommons-portal)/status"]).stdout
    assert caps.split()[-1] == "0000000000000000", caps
    assert drv.exec(c.ctid, ["stat", "-c", "%a %U", "/etc/aicommons/portal.env"]).stdout.strip() == "600 root"
    key = next(iter(portal["key"].values()))
    assert key not in ps and key not in drv.exec(c.ctid, ["journalctl", "-u", "aicommons-portal", "--no-pager"]).stdout
    # the state it works on is the host's own file: the portal's session key is the one made here
    assert drv.get(c.ctid).status == "running"


def test_identity_headers_are_believed_only_from_traefiks_source(portal):
    drv, c = portal["drv"], portal["ct"]
    url = f"http://{c.ip}:8080/api/me"
    hdr = ["-H", "X-authentik-username: alice", "-H", "X-authentik-email: alice@example.org"]
    # from the namespace: the connection leaves from the bridge's 10.0.5.1, as Traefik's do on LXC
    r = curl("-w", "\n%{http_code}", *hdr, url)
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "200", r.stdout
    me = json.loads(body)
    assert me["identity"] == {"name": "alice", "operator": False, "via": "sso"}
    # From its container the portal cannot see the host's LXC containers: never "missing" for
    # that, and no restart offered that only the host could do (no app answers here: "unknown")
    assert me["workbench"]["container"] == "unknown" and me["workbench"]["can_restart"] is False, me
    # from the portal's own container (any address but Traefik's): the headers are ignored
    probe = ("import sys, urllib.request, urllib.error\n"
             "req = urllib.request.Request(sys.argv[1], headers={'X-authentik-username': 'alice', "
             "'X-authentik-email': 'alice@example.org'})\n"
             "try:\n    print(urllib.request.urlopen(req, timeout=10).status)\n"
             "except urllib.error.HTTPError as e:\n    print(e.code)\n")
    forged = drv.exec(c.ctid, ["python3", "-c", probe, url])
    assert forged.stdout.strip() in ("401", "403"), forged


def test_from_inside_its_container_changes_to_containers_are_refused_naming_the_host(portal):
    """The LXC driver needs the host (lxc-*, the namespace): asked from the portal's container,
    the change is refused before anything is touched, naming where to run it."""
    drv, c = portal["drv"], portal["ct"]
    res = drv.exec(c.ctid, ["sh", "-c", "set -a; . /etc/aicommons/portal.env; /opt/aicommons/runtime/bin/python -m "
                                        "aicommons.cli users add bob --email bob@example.org"])
    assert not res.ok and "made and changed on its host" in res.stdout + res.stderr, res.stdout + res.stderr
    assert Path(portal["where"], "site.yaml").read_text().count("bob") == 0
