"""Inside containers on the simulated cluster: the root-only template step, Docker, the user's
bundle, `docker compose up -d`, app health, shared-service recipes.

Real: proxmoxer over HTTPS, paramiko SSH (host keys checked), the driver and provision code,
the user bundle from the real renderer. Simulated: Proxmox VE and what `pct exec` answers
(tests/pvesim; its exec_handler plays Docker, curl and apt inside the containers).
"""

from __future__ import annotations

import pytest

from aicommons.catalog import load_catalog
from aicommons.drivers.proxmox import provision
from aicommons.drivers.proxmox.api import ApiError, PveApi, RetryPolicy
from aicommons.drivers.proxmox.converge import converge
from aicommons.drivers.proxmox.template import build_template, check_template
from aicommons.errors import TemporaryError
from tests.pvesim import TEMPLATE, Simulator
from tests.test_proxmox_driver import driver_of, new_sim, small_site


class Inside:
    """Stateful answers for `pct exec`: Docker absent until installed; apps healthy after N probes."""

    def __init__(self, unhealthy_probes: int = 0, never: str | None = None):
        self.docker: set[int] = set()
        self.probes = 0
        self.unhealthy, self.never = unhealthy_probes, never

    def __call__(self, ct, argv, stdin):
        if argv[:3] == ["docker", "compose", "version"]:
            return (0, b"Docker Compose version v2.40.0\n", b"") if ct.vmid in self.docker else (127, b"", b"docker: not found\n")
        if argv[:2] == ["sh", "-c"] and "docker-compose-plugin" in argv[2]:
            self.docker.add(ct.vmid)
            return 0, b"", b""
        if argv[:1] == ["docker"] and ct.vmid not in self.docker:
            return 127, b"", b"docker: not found\n"
        if argv[:1] == ["curl"]:
            self.probes += 1
            if (self.never and f":{self.never}" in argv[-1]) or self.probes <= self.unhealthy:
                return 7, b"", b"curl: (7) Failed to connect\n"
        return None


def api_for(sim: Simulator, root: bool) -> PveApi:
    host = f"127.0.0.1:{sim.api.port}"
    if root:
        return PveApi(host, "root@pam", "", password=sim.root_password, verify=sim.ca_file)
    return PveApi(host, sim.token_id, sim.token_secret, verify=sim.ca_file, retry=RetryPolicy(attempts=1))


def test_template_needs_root_and_is_adopted_once_built():
    with Simulator(nodes=1) as sim:
        token = api_for(sim, root=False)
        with pytest.raises(ApiError) as e:
            build_template(token, "pve1", 9000, ostemplate=TEMPLATE, storage="local-lvm")
        assert e.value.status == 403 and "root@pam" in str(e.value)
        assert "does not exist" in " ".join(check_template(token, "pve1", 9000))
        root = api_for(sim, root=True)
        build_template(root, "pve1", 9000, ostemplate=TEMPLATE, storage="local-lvm")
        assert check_template(token, "pve1", 9000) == []
        conf = sim.cluster.cts[9000].conf
        assert conf["features"] == "nesting=1,keyctl=1" and conf["template"] == "1"
        sim.reset_counts()
        build_template(root, "pve1", 9000, ostemplate=TEMPLATE, storage="local-lvm")  # adopt: no change
        assert sim.writes() == 0


def test_template_with_docker_prepared_over_ssh():
    sim = new_sim(nodes=1)
    try:
        sim.cluster.cts.pop(9000)
        inside = Inside()
        sim.exec_handler = inside
        site, _ = small_site(sim, users=1)
        driver = driver_of(sim, site)
        root = api_for(sim, root=True)
        build_template(root, "pve1", 9000, ostemplate=TEMPLATE, storage="local-lvm",
                       prepare=lambda ctid: provision.ensure_docker(driver, ctid))
        assert 9000 in inside.docker and sim.cluster.cts[9000].template
        assert sim.cluster.cts[9000].status == "stopped"
    finally:
        sim.close()


@pytest.fixture
def running():
    sim = new_sim()
    inside = Inside()
    sim.exec_handler = inside
    site, resolved = small_site(sim, users=2)
    driver = driver_of(sim, site)
    assert converge(driver, resolved.containers).ok
    yield sim, inside, site, resolved, driver
    driver.close()
    sim.close()


def test_wait_ready_installs_docker_where_the_bundle_needs_it(running):
    sim, inside, site, resolved, driver = running
    users = {c.ctid for c in resolved.containers if c.role == "user"}
    assert users <= inside.docker
    assert 102 not in inside.docker  # postgres is an apt service: no Docker
    sim.records.clear()
    driver.wait_ready(200)  # now present: one check, no install
    assert [r.argv[:3] for r in sim.records if r.ctid == 200] == [["docker", "compose", "version"]]


def bundle(resolved, user):
    from aicommons.render.site import render_user

    files = render_user(resolved, user, lambda scope, key: f"secret-{scope}-{key}-" + "x" * 32)
    prefix = f"users/{user}/"
    return {k[len(prefix):]: f for k, f in files.items() if k.startswith(prefix)}


def test_user_bundle_pushed_composed_and_healthy(running):
    sim, inside, site, resolved, driver = running
    t = resolved.tenant("user1")
    files = bundle(resolved, "user1")
    assert "docker-compose.yml" in files and ".env" in files
    inside.unhealthy = inside.probes + 3  # the first three probes fail, then every app answers
    slept = []
    provision.provision_user(driver, t.ctid, "user1", list(t.apps), files, ports=t.ports, poll=0.01, sleep=slept.append)
    fs = sim.cluster.cts[t.ctid].fs
    assert fs["/opt/aicommons/user1/.env:mode"] == b"0600"
    assert fs["/opt/aicommons/user1/docker-compose.yml"] == files["docker-compose.yml"].content.encode()
    ran = [r.argv for r in sim.records if r.ctid == t.ctid and r.argv[:2] == ["docker", "compose"]]
    assert ["up", "-d", "--remove-orphans"] == ran[-1][-3:]
    assert slept  # it did wait for the apps


def test_app_that_never_gets_healthy_is_named(running):
    sim, inside, site, resolved, driver = running
    t = resolved.tenant("user2")
    inside.never = str(t.ports["flowise"])
    with pytest.raises(TemporaryError) as e:
        provision.wait_healthy(driver, t.ctid, provision.app_checks(list(t.apps), t.ports), timeout=0, poll=0,
                               sleep=lambda s: None)
    assert "flowise" in str(e.value) and "openwebui" not in str(e.value)


def test_shared_services_installed_by_their_recipe(running):
    sim, inside, site, resolved, driver = running
    cat = load_catalog()
    provision.install_service(driver, 102, cat.services["postgres"])
    apt = [r for r in sim.records if r.ctid == 102 and r.argv[:2] == ["sh", "-c"]][-1]
    assert "apt-get install -y -q postgresql-15 postgresql-15-pgvector" in apt.argv[2]
    provision.install_service(driver, 100, cat.services["ollama"])
    assert sim.cluster.cts[100].fs["/root/aicommons-install-ollama.sh"] == cat.services["ollama"].install.script.encode()
    assert sim.records[-1].argv == ["sh", "-eu", "/root/aicommons-install-ollama.sh"]
