"""The model server's container on plain LXC: llama-server and the model files from their cached
layers (drivers/modellayers.py), bound read-only; one systemd unit per model; only the gateway
(the catalog's `clients`) may reach it.

The firewall sits in the site's namespace (bridged frames pass iptables there, see
apps.isolate_users): the model ports of the container take forwarded traffic only from the
client addresses; the control plane reaches it from the namespace itself (not forwarded), for
`status`. llama-server binds to the container's address only.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from aicommons.drivers import modellayers
from aicommons.drivers.lxc import netns
from aicommons.drivers.lxc.run import run
from aicommons.errors import PermanentError
from aicommons.plan.model import Container
from aicommons.plan.secrets import SecretLookup
from aicommons.render.modelserver import USER, unit_text


def layer_mounts(units, cache_dir: str, log) -> list[tuple[str, str]]:
    """(host dir, mount point): the llama-server layer and each model file's layer, built if missing."""
    if not units:
        return []
    out = [(str(modellayers.ensure_server_layer(cache_dir, log)), modellayers.SERVER_MOUNT)]
    for u in units:
        pair = (str(modellayers.ensure_model_layer(u.model, cache_dir, log)), modellayers.model_mount(u.model))
        if pair not in out:
            out.append(pair)
    return out


def configure(driver, c: Container, secrets: SecretLookup) -> None:
    """Write and start one unit per model, stop units of models no longer served, firewall it."""
    from aicommons.drivers.lxc.services import _put_if_changed, _start, _wait_listening

    units = list(driver.models)
    if not units:
        raise PermanentError("llama-server is enabled but `models:` names no model file; add one "
                             "(see `aicommons init --driver lxc`)")
    driver.sh(c.ctid, f"id -u {USER} >/dev/null 2>&1 || useradd --system --no-create-home "
                      f"--shell /usr/sbin/nologin {USER}")
    binary = str(modellayers.server_binary(Path(modellayers.SERVER_MOUNT)))
    wanted = set()
    for u in units:
        path = f"/etc/systemd/system/{u.unit}.service"
        text = unit_text(u, binary=binary, model_file=modellayers.model_path_inside(u.model), host=c.ip)
        changed = _put_if_changed(driver, c.ctid, path, text)
        wanted.add(u.unit)
        if changed:
            driver.sh(c.ctid, "systemctl daemon-reload")
        _start(driver, c.ctid, [u.unit], changed)
    # Units of models taken out of `models:` stop and go.
    have = driver.exec(c.ctid, ["sh", "-c", "ls /etc/systemd/system/ | sed -n 's/^\\(aic-model-.*\\)\\.service$/\\1/p'"])
    for old in set(have.stdout.split()) - wanted:
        q = shlex.quote(old)
        driver.sh(c.ctid, f"systemctl disable --now {q} || true; rm -f /etc/systemd/system/{q}.service; "
                          "systemctl daemon-reload")
    firewall(driver.net, c.ip, [u.port for u in units], driver.model_clients)
    _wait_listening(driver, c, [u.port for u in units], timeout=180)
    _wait_loaded(driver, c, [u.port for u in units], timeout=300)


def _wait_loaded(driver, c: Container, ports: list[int], timeout: float) -> None:
    """llama-server listens before its model is loaded and answers 503 "Loading model" until then
    (server.cpp: /health is 200 only once the model is ready): ready means every /health is 200."""
    from aicommons.drivers.lxc.services import wait_inside

    probe = ("import sys, urllib.request\nfor p in sys.argv[2:]:\n"
             "    urllib.request.urlopen(f'http://{sys.argv[1]}:{p}/health', timeout=5).read()\n")
    wait_inside(driver, c, probe, ports, timeout, f"the models on port(s) {', '.join(map(str, ports))} have not "
                "finished loading (/health is not 200)")

def firewall_rules(net_comment: str, ip: str, ports: list[int], clients: tuple[str, ...]) -> list[list[str]]:
    """FORWARD rules (in order): the clients may reach the model ports; everyone else is dropped."""
    dports = ",".join(map(str, ports))
    match = ["-d", ip, "-p", "tcp", "-m", "multiport", "--dports", dports, "-m", "comment",
             "--comment", f"{net_comment}:models"]
    return [[*match[:2], "-s", c, *match[2:], "-j", "ACCEPT"] for c in clients] + [[*match, "-j", "DROP"]]


def firewall(net: netns.NetPlan, ip: str, ports: list[int], clients: tuple[str, ...]) -> None:
    base = ["ip", "netns", "exec", net.ns, "iptables", "-w"]
    netns.nsrun(net.ns, ["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"], check=False)
    # Ours are replaced as a set, so a changed client list or port list leaves nothing stale.
    listing = run([*base, "-S", "FORWARD"], check=False).stdout.decode()
    for line in listing.splitlines():
        if f"{net.comment}:models" in line and line.startswith("-A FORWARD "):
            run([*base, "-D", *shlex.split(line)[1:]], check=False)
    for i, rule in enumerate(firewall_rules(net.comment, ip, ports, clients), start=1):
        run([*base, "-I", "FORWARD", str(i), *rule[0:]])
