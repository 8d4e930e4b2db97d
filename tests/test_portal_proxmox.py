"""The portal deployed on Proxmox by the engine's service step: this checkout's wheel and the
runtime lock pushed into CT 129 and installed by hash, its site file and env file written 0600,
its unit started; re-applied only when something it runs from changed.

Real: the engine, state (in the REAL PostgreSQL 15 of the `pg` fixture: the portal in its
container works on the site's state, so it must be a URL it can reach), the renderer, the
wheel built from this checkout, proxmoxer over HTTPS, paramiko SSH, `sh -n` on the rendered
install script. Simulated: Proxmox VE (tests/pvesim); `pct exec` inside CT 129 is answered by
this module's handler, which checks each command against the files pushed before it (the
wheel's sha256 against the pinned requirement, the unit and env files present), since no
container runs here.
"""

from __future__ import annotations

import hashlib
import re
import secrets as pysecrets
import subprocess

import psycopg
import pytest
import yaml
from cryptography.fernet import Fernet

from aicommons.drivers import runtime
from aicommons.engine.api import apply_site
from tests.test_proxmox_driver import engine_kw, failures, new_sim

ROOT = "/opt/aicommons/portal"


@pytest.fixture
def sim():
    s = new_sim()
    yield s
    s.close()


@pytest.fixture
def url(pg):
    name = f"state_{pysecrets.token_hex(4)}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{name}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _site(sim, tmp_path):
    data = yaml.safe_load(sim.site_yaml(0))
    data["services"] = {"postgres": {}, "portal": {}}
    data["user_template"]["apps"] = ["code-server"]  # needs no back end
    site_file = tmp_path / "site.yml"
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return site_file


class Ct129:
    """What ran in CT 129, checked against what had been pushed when it ran."""

    def __init__(self):
        self.ran: list[list[str]] = []
        self.problems: list[str] = []

    def __call__(self, ct, argv, stdin):
        if ct.vmid != 129:
            return None
        self.ran.append(argv)
        if argv[:2] == ["sh", "-eu"] and argv[2] == f"{ROOT}/install.sh":
            script = ct.fs[argv[2]].decode()
            syntax = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
            if syntax.returncode != 0:
                self.problems.append(f"install.sh: {syntax.stderr}")
            req = ct.fs[f"{ROOT}/aicommons-wheel.txt"].decode()
            m = re.fullmatch(r"aicommons @ file://(\S+) --hash=sha256:([0-9a-f]{64})\n", req)
            if not m or hashlib.sha256(ct.fs.get(m.group(1), b"")).hexdigest() != m.group(2):
                self.problems.append(f"the pushed wheel does not match its pinned hash: {req!r}")
            for need in (f"{ROOT}/requirements.lock", f"{ROOT}/aicommons-portal.service",
                         "/etc/aicommons/portal.env", "/etc/aicommons/site.yaml"):
                if need not in ct.fs:
                    self.problems.append(f"install.sh ran before {need} was pushed")
        return 0, b"", b""


def test_portal_is_pushed_installed_by_hash_and_started(sim, tmp_path, url, monkeypatch):
    monkeypatch.setenv("AICOMMONS_SECRET_KEY", Fernet.generate_key().decode())
    site_file = _site(sim, tmp_path)
    ct = Ct129()
    sim.exec_handler = ct
    first = apply_site(site_file, state_path=url, **engine_kw(sim, site_file))
    assert first.ok, failures(first)
    assert not ct.problems, ct.problems
    fs = sim.cluster.cts[129].fs
    script = fs[f"{ROOT}/install.sh"].decode()
    assert re.search(r"-m pip .*install -q --no-deps --require-hashes --only-binary :all: -r "
                     rf"{ROOT}/aicommons-wheel.txt", script), script
    assert "aicommons==" not in script  # never a registry name
    assert "systemctl enable --quiet aicommons-portal.service" in script
    assert "systemctl restart aicommons-portal.service" in script  # started, not only enabled
    assert ["sh", "-eu", f"{ROOT}/install.sh"] in ct.ran
    _, _, wheel = runtime.wheel_bytes(runtime.checkout())
    assert fs[f"{ROOT}/aicommons-0.1.0-py3-none-any.whl"] == wheel
    assert fs[f"{ROOT}/requirements.lock"].decode() == runtime.lock_text()
    env = fs["/etc/aicommons/portal.env"].decode()
    assert fs["/etc/aicommons/portal.env:mode"] == b"0600" and fs["/etc/aicommons/site.yaml:mode"] == b"0600"
    assert f'AICOMMONS_STATE="{url}"' in env and 'AICOMMONS_SITE="/etc/aicommons/site.yaml"' in env
    assert "AICOMMONS_SECRET_KEY=" in env
    unit = fs[f"{ROOT}/aicommons-portal.service"].decode()
    # Traefik is its own host on Proxmox: its address is where its connections come from
    assert "serve --listen 10.0.5.129:8080 --trusted-proxy 10.0.4.10" in unit
    assert "EnvironmentFile=/etc/aicommons/portal.env" in unit

    # nothing changed: nothing pushed, nothing run
    ct.ran.clear()
    assert apply_site(site_file, state_path=url, **engine_kw(sim, site_file)).ok
    assert ct.ran == []

    # a person added (by hand here; from the portal's own page, the restart would cut the job that
    # adds them): the site file is pushed (the portal reads it again when it changes), nothing run
    text = site_file.read_text().replace("users: []", "users:\n- {name: alice, email: alice@example.org}")
    site_file.write_text(text)
    again = apply_site(site_file, state_path=url, **engine_kw(sim, site_file))
    assert again.ok, failures(again)
    assert b"alice" in fs["/etc/aicommons/site.yaml"]
    assert [a for a in ct.ran if a[0] != "mkdir"] == [], ct.ran  # mkdir -p: the push's own

    # what it takes at start changed (here the operator's address): pushed and restarted, no reinstall
    site_file.write_text(site_file.read_text() + "operator_email: ops@example.org\n")
    third = apply_site(site_file, state_path=url, **engine_kw(sim, site_file))
    assert third.ok, failures(third)
    assert b"ops@example.org" in fs["/etc/aicommons/site.yaml"]
    assert [a for a in ct.ran if a[0] != "mkdir"] == [["systemctl", "restart", "aicommons-portal.service"]], ct.ran


def test_portal_on_a_local_sqlite_state_is_not_deployed_and_says_why(sim, tmp_path, monkeypatch):
    monkeypatch.setenv("AICOMMONS_SECRET_KEY", Fernet.generate_key().decode())
    site_file = _site(sim, tmp_path)
    ct = Ct129()
    sim.exec_handler = ct
    res = apply_site(site_file, **engine_kw(sim, site_file))
    assert res.ok, failures(res)
    note = res.outcomes["service.portal"].detail
    assert "portal not deployed" in note and "keep the state in PostgreSQL" in note, note
    assert f"{ROOT}/aicommons-0.1.0-py3-none-any.whl" not in sim.cluster.cts[129].fs
    assert "/etc/aicommons/portal.env" not in sim.cluster.cts[129].fs


def test_the_gateway_restarts_for_its_own_settings_not_when_people_come_and_go(sim, tmp_path, url, monkeypatch):
    """Every `users add` rewrites the site file; the gateway (CT 137) reads only its own part of it
    (its settings, where the models are). Restarting it for a new person would cut everyone's
    streams: it is neither pushed the file nor restarted then; a change to its settings does both."""
    monkeypatch.setenv("AICOMMONS_SECRET_KEY", Fernet.generate_key().decode())
    data = yaml.safe_load(sim.site_yaml(0))
    data["services"] = {"postgres": {}, "gateway": {}}
    data["user_template"]["apps"] = ["code-server"]
    site_file = tmp_path / "site.yml"
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    ran: list[list[str]] = []
    sim.exec_handler = lambda ct, argv, stdin: (ran.append(argv), (0, b"", b""))[1] if ct.vmid == 137 else None
    assert (first := apply_site(site_file, state_path=url, **engine_kw(sim, site_file))).ok, failures(first)
    assert ["sh", "-eu", "/opt/aicommons/gateway/install.sh"] in ran
    fs = sim.cluster.cts[137].fs

    ran.clear()
    data["users"] = [{"name": "alice", "email": "alice@example.org"}]
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    assert (again := apply_site(site_file, state_path=url, **engine_kw(sim, site_file))).ok, failures(again)
    assert ran == [] and b"alice" not in fs["/etc/aicommons/site.yaml"], ran

    data["gateway"] = {"budget": {"period": "day", "tokens": 5000}}
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    assert (third := apply_site(site_file, state_path=url, **engine_kw(sim, site_file))).ok, failures(third)
    assert ["systemctl", "restart", "aicommons-gateway.service"] in ran
    assert b"alice" in fs["/etc/aicommons/site.yaml"] and b"5000" in fs["/etc/aicommons/site.yaml"]
