"""The model server's container on plain LXC: llama-server and the model files from their cached
layers (drivers/modellayers.py), bound read-only; one systemd unit per model; only the gateway
(the catalog's `clients`) may reach it.

That rule is the site bridge's filter (render/bridge_filter.model_server_rules), loaded with the
namespace; the control plane reaches the server from the namespace itself (not bridged), for
`status`. llama-server binds to the container's address only.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from aicommons.drivers import modellayers
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
