"""Inside containers on the simulated cluster: the root-only template step (in the pool), Docker
where a bundle needs it, and the engine's bundle step (`docker compose up -d`) over `pct`.

Real: proxmoxer over HTTPS, paramiko SSH (host keys checked), the engine, the driver and its
template/provision code, the user bundle from the real renderer. Simulated: Proxmox VE and what
`pct exec` answers (tests/pvesim; its exec_handler plays Docker inside the containers).
"""

from __future__ import annotations

import pytest

from aicommons.drivers.proxmox import provision
from aicommons.drivers.proxmox.api import ApiError, PveApi, RetryPolicy
from aicommons.drivers.proxmox.template import build_template, check_template
from aicommons.engine.api import apply_site
from tests.pvesim import TEMPLATE, Simulator
from tests.test_proxmox_driver import driver_of, new_sim, site_of, small

RUNC_1_3_3 = (b"docker: Error response from daemon: failed to create task for container: failed to create shim task: "
             b"OCI runtime create failed: runc create failed: unable to start container process: error during "
             b"container init: open sysctl net.ipv4.ip_unprivileged_port_start file: reopen fd 8: permission denied: "
             b"unknown\n")  # as reported in opencontainers/runc#4968 and moby/moby#51405


class Inside:
    """Stateful answers for `pct exec`: Docker absent until installed; in `broken` containers Docker is
    there but cannot start a container (runc 1.3.3 under LXC's AppArmor profile)."""

    def __init__(self):
        self.docker: set[int] = set()
        self.broken: set[int] = set()
        self.started: list[int] = []

    def __call__(self, ct, argv, stdin):
        if argv[:2] == ["sh", "-c"] and "docker run --rm" in argv[2] and ct.vmid in self.docker:
            if ct.vmid in self.broken:
                return 125, b"", RUNC_1_3_3
            self.started.append(ct.vmid)
            return None  # the simulator parses the script (sh -n) and answers 0
        if argv[:3] == ["dpkg-query", "-W", "docker-ce"]:
            return 0, b"docker-ce\t5:29.1.3-1~debian.12~bookworm\ncontainerd.io\t2.2.1-1~debian.12~bookworm\n", b""
        if argv[:3] == ["docker", "compose", "version"]:
            return (0, b"Docker Compose version v2.40.0\n", b"") if ct.vmid in self.docker else (127, b"", b"docker: not found\n")
        if argv[:2] == ["sh", "-c"] and "docker-compose-plugin" in argv[2]:
            self.docker.add(ct.vmid)
            return 0, b"", b""
        if argv[:1] == ["docker"] and ct.vmid not in self.docker:
            return 127, b"", b"docker: not found\n"
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
        assert sim.cluster.cts[9000].pool == "aicommons"  # the token sees and clones only what is in the pool
        sim.reset_counts()
        build_template(root, "pve1", 9000, ostemplate=TEMPLATE, storage="local-lvm")  # adopt: no change
        assert sim.writes() == 0


def test_template_with_docker_prepared_over_ssh():
    sim = new_sim(nodes=1)
    try:
        sim.cluster.cts.pop(9000)
        inside = Inside()
        sim.exec_handler = inside
        site, _ = site_of(sim, 1)
        driver = driver_of(sim, site)
        root = api_for(sim, root=True)
        build_template(root, "pve1", 9000, ostemplate=TEMPLATE, storage="local-lvm",
                       prepare=lambda ctid: provision.ensure_docker(driver, ctid))
        assert 9000 in inside.docker and sim.cluster.cts[9000].template
        assert sim.cluster.cts[9000].status == "stopped"
    finally:
        sim.close()


@pytest.fixture
def running(tmp_path):
    sim = new_sim()
    inside = Inside()
    sim.exec_handler = inside
    site_file, kw = small(sim, tmp_path, users=2)
    result = apply_site(site_file, **kw)
    assert result.ok, [(o.step, o.detail) for o in result.errors]
    yield sim, inside, result.plan.resolved, kw["driver"]
    kw["driver"].close()
    sim.close()


def test_wait_ready_installs_docker_where_the_bundle_needs_it(running):
    sim, inside, resolved, driver = running
    users = {c.ctid for c in resolved.containers if c.role == "user"}
    assert users <= inside.docker
    assert 102 not in inside.docker  # postgres is an apt service: no Docker
    sim.records.clear()
    driver.wait_ready(200)  # now present: one check, no install, and a real container started
    assert [r.argv[:2] for r in sim.records if r.ctid == 200] == [["docker", "compose"], ["sh", "-c"]]
    assert inside.started.count(200) >= 2  # at its first readiness and now


def test_the_install_pins_docker_before_runc_1_3_3_and_holds_it():
    script = provision.DOCKER_INSTALL
    for pkg, version in provision.DOCKER_PINS.items():
        assert f" {pkg}={version}" in script
    assert provision.DOCKER_PINS["containerd.io"].startswith("1.7.28-1~")  # 1.7.28-2 carries runc 1.3.3
    assert "apt-mark hold docker-ce docker-ce-cli containerd.io docker-compose-plugin" in script


def test_a_docker_that_cannot_start_a_container_is_not_ready(running):
    """Issue 24: readiness was `docker compose version`, which passes on a Docker whose runc cannot start
    anything; the failure surfaced only at `compose up`. Now readiness starts a container."""
    from aicommons.errors import PermanentError

    sim, inside, resolved, driver = running
    inside.broken.add(200)
    with pytest.raises(PermanentError) as e:
        driver.wait_ready(200)
    msg = str(e.value)
    assert "cannot start a container" in msg and "ip_unprivileged_port_start" in msg
    assert "opencontainers/runc#4968" in msg and "containerd.io=1.7.28-1~debian.12~bookworm" in msg
    assert "containerd.io 2.2.1-1~debian.12~bookworm" in msg  # what is installed, for the operator


def test_the_engine_pushed_each_users_bundle_and_ran_compose(running):
    sim, inside, resolved, driver = running
    for t in resolved.tenants:
        fs = sim.cluster.cts[t.ctid].fs
        assert fs[f"/opt/aicommons/{t.user}/.env:mode"] == b"0600"
        assert f"/opt/aicommons/{t.user}/docker-compose.yml" in fs
        ran = [r.argv for r in sim.records if r.ctid == t.ctid and r.argv[:2] == ["docker", "compose"]]
        assert ran and ran[-1][-3:] == ["up", "-d", "--remove-orphans"]
