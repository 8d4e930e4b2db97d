"""ProxmoxDriver against the simulated 3-node cluster (tests/pvesim).

Real: proxmoxer over HTTPS (CA verified), paramiko SSH with host keys checked (RejectPolicy),
the driver, placement, converge loop and firewall sync. Simulated: Proxmox VE itself — its API
(schema-checked), tasks, locks and the `pct`/`ping` commands on its nodes' SSH side.
"""

from __future__ import annotations

import threading

import pytest
import yaml

from aicommons.drivers.proxmox.api import RetryPolicy
from aicommons.drivers.proxmox.converge import converge
from aicommons.drivers.proxmox.driver import ProxmoxDriver
from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.resolve import resolve
from aicommons.spec.load import load_text
from tests.pvesim import Simulator
from tests.pvesim.state import MiB

NODES = ("pve1", "pve2", "pve3")


def new_sim(**kw) -> Simulator:
    sim = Simulator(**kw).__enter__()
    for i, node in enumerate(NODES[: len(sim.ssh)]):
        sim.add_template(node, 9000 + i)
    return sim


def site_of(sim: Simulator, users: int = 50, edit=None):
    data = yaml.safe_load(sim.site_yaml(users))
    if edit:
        edit(data)
    site, _ = load_text(yaml.safe_dump(data))
    return site, resolve(site)


def driver_of(sim: Simulator, site, **kw) -> ProxmoxDriver:
    kw.setdefault("retry", RetryPolicy(base=0.01, cap=0.05, lock_wait=10))
    return ProxmoxDriver.from_site(site, ssh_address=sim.ssh_address, ready_poll=0.01, **kw)


def assert_no_overcommit(sim: Simulator, reserve_mb: int = 2048) -> None:
    for name, node in sim.cluster.nodes.items():
        mem, cores = sim.cluster.committed(name)
        assert mem <= node.maxmem - reserve_mb * MiB, (name, mem)
        assert cores <= node.maxcpu, (name, cores)


@pytest.fixture(scope="module")
def seeded():
    """The 50-user seed site, created once on a fresh 3-node cluster."""
    sim = new_sim()
    site, resolved = site_of(sim)
    driver = driver_of(sim, site)
    report = converge(driver, resolved.containers)
    yield sim, site, resolved, driver, report
    driver.close()
    sim.close()


def test_seed_site_is_created_on_three_nodes(seeded):
    sim, site, resolved, driver, report = seeded
    assert report.ok, report.errors
    assert sorted(report.created) == sorted(c.ctid for c in resolved.containers)
    states = {s.ctid: s for s in driver.list_containers()}
    assert len(states) == 83
    for c in resolved.containers:
        s = states[c.ctid]
        assert (s.status, s.ip, s.memory_mb, s.cores, s.hostname) == ("running", c.ip, c.memory_mb, c.cores, c.hostname)
        conf = sim.cluster.cts[c.ctid].conf
        assert f"ip={c.ip}/24" in conf["net0"] and "firewall=1" in conf["net0"] and "bridge=vmbr0" in conf["net0"]
        assert conf["tags"].split(";") == ["aicommons", c.role, site.name]
        assert conf["startup"].startswith(f"order={c.phase}")
        assert sim.cluster.cts[c.ctid].pool == "aicommons"
    # user containers are linked clones of their node's template; apt/script services come from the ostemplate
    user = sim.cluster.cts[200]
    assert "base-900" in user.conf["rootfs"] and user.disk_gb() == 100
    assert "base-" not in sim.cluster.cts[102].conf["rootfs"]  # postgres: apt recipe, created fresh
    assert len({s.node for s in states.values()}) == 3
    assert states[100].node == "pve3"  # ollama (gpu: optional) prefers the GPU node
    assert_no_overcommit(sim)


def test_second_run_makes_no_writing_call(seeded):
    sim, site, resolved, driver, _ = seeded
    sim.reset_counts()
    report = converge(driver, resolved.containers)
    assert report.ok and not report.created and not report.updated and not report.started
    assert sim.writes() == 0
    assert sim.api.total() > 0  # it did read


def test_firewall_applied_then_unchanged(seeded):
    from aicommons.drivers.proxmox.firewall import apply_firewall
    from aicommons.render.firewall import firewall_plan

    sim, site, resolved, driver, _ = seeded
    plan = firewall_plan(resolved)
    first = driver.apply_firewall(resolved)
    assert first.writes > 0 and "datacenter firewall is disabled" in first.notes[0]
    assert [r["action"] for r in sim.cluster.fw_rules[200]] == ["aic-user"]
    assert sim.cluster.fw_options["200"]["policy_in"] == "DROP"
    users_set = sim.cluster.fw_ipsets[("cluster", "aic-users")]
    assert {e["cidr"] for e in users_set} == {c.ip for c in resolved.containers if c.role == "user"}
    sim.reset_counts()
    again = apply_firewall(driver.api, plan, driver.node_of)
    assert again.writes == 0 and sim.writes() == 0


def test_drift_is_visible_and_converged(seeded):
    sim, site, resolved, driver, _ = seeded
    with sim.cluster.lock:  # someone changes memory by hand in the GUI
        sim.cluster.cts[205].conf["memory"] = "4096"
    state = driver.get(205)
    assert state.memory_mb == 4096 and state.memory_mb != resolved.container(205).memory_mb
    sim.reset_counts()
    report = converge(driver, resolved.containers)
    assert report.ok and report.updated == [205]
    assert sim.cluster.cts[205].conf["memory"] == "8192"
    sim.reset_counts()
    assert converge(driver, resolved.containers).ok and sim.writes() == 0


def test_exec_and_push_go_over_ssh_to_the_hosting_node(seeded):
    sim, site, resolved, driver, _ = seeded
    node = driver.node_of(201)
    driver.push(201, b"KEY=value\n", "/opt/aicommons/user2/.env", 0o600)
    assert sim.cluster.cts[201].fs["/opt/aicommons/user2/.env"] == b"KEY=value\n"
    assert sim.cluster.cts[201].fs["/opt/aicommons/user2/.env:mode"] == b"0600"
    res = driver.exec(201, ["cat", "/opt/aicommons/user2/.env"])
    assert res.ok and res.stdout == "KEY=value\n"
    assert sim.records[-1].node == node and sim.records[-1].command.startswith("pct exec 201 -- cat")


def small_site(sim, users=6):
    def edit(d):
        d["services"] = {"postgres": {}, "redis": {}, "qdrant": {}, "ollama": {}, "garage": {}, "searxng": {}}
    return site_of(sim, users, edit)


def test_lock_and_500_are_retried():
    sim = new_sim()
    try:
        site, resolved = small_site(sim)
        with sim.cluster.lock:  # someone else's backup holds pve1's template for a moment
            sim.cluster.cts[9000].conf["lock"] = "backup"
        threading.Timer(0.3, lambda: sim.cluster.cts[9000].conf.pop("lock", None)).start()
        sim.fail_http(r"/config$", method="PUT", times=3)
        sim.fail_http(r"/cluster/resources$", method="GET", status=503, message="Service Unavailable", times=2)
        driver = driver_of(sim, site)
        report = converge(driver, resolved.containers)
        assert report.ok, report.errors
        assert all(f.times == 0 for f in sim.cluster.faults)
        puts = sum(n for (m, p), n in sim.api.counts.items() if m == "PUT" and p.endswith("/config"))
        assert puts >= 3 + 1
        assert_no_overcommit(sim)
    finally:
        sim.close()


def test_task_timeout_is_reported_with_its_log_then_converges():
    sim = new_sim()
    try:
        site, resolved = small_site(sim)
        sim.hang_next_task("vzclone")
        driver = driver_of(sim, site, task_timeout=2, retry=RetryPolicy(base=0.01, cap=0.05, lock_wait=1))
        report = converge(driver, resolved.containers)
        timed_out = [m for m in report.errors.values() if "did not finish within 2s" in m]
        assert len(timed_out) == 1 and "task log" in timed_out[0] and "simulated hang" in timed_out[0]
        # the hung clone still holds its template: other clones of it are refused, and say why
        assert all("CT is locked (disk)" in m for m in report.errors.values() if m not in timed_out)
        assert sim.release_hung() == 1
        again = converge(driver, resolved.containers)
        assert again.ok, again.errors
        sim.reset_counts()
        assert converge(driver, resolved.containers).ok and sim.writes() == 0
    finally:
        sim.close()


def test_node_full_is_reported_then_placed_elsewhere():
    sim = new_sim()
    try:
        site, resolved = small_site(sim)
        sim.fill_node("pve2")  # stays full
        driver = driver_of(sim, site)
        report = converge(driver, resolved.containers)
        assert report.errors
        assert all("pve2" in m and "insufficient free space" in m for m in report.errors.values())
        assert not any(c.node == "pve2" for c in sim.cluster.cts.values() if not c.template)
        again = converge(driver, resolved.containers)  # the next run avoids pve2
        assert again.ok, again.errors
        assert {s.ctid for s in driver.list_containers()} == {c.ctid for c in resolved.containers}
        assert not any(s.node == "pve2" for s in driver.list_containers())
        assert_no_overcommit(sim)
    finally:
        sim.close()


def test_plan_that_does_not_fit_is_refused_before_any_change():
    sim = new_sim(mem_gb=96, cores=48)
    try:
        site, resolved = site_of(sim, 50)
        driver = driver_of(sim, site)
        sim.reset_counts()
        with pytest.raises(PermanentError) as e:
            converge(driver, resolved.containers)
        text = str(e.value)
        assert "does not fit" in text and "MiB memory" in text and "short by" in text
        assert sim.writes() == 0 and len(sim.cluster.cts) == 3
    finally:
        sim.close()


def test_pinned_nodes_are_honoured():
    sim = new_sim()
    try:
        def edit(d):
            d["services"] = {"postgres": {"node": "pve1"}, "redis": {}, "qdrant": {}, "ollama": {}, "garage": {},
                             "searxng": {}}
            d["users"][0]["node"] = "pve3"
            d["driver"]["pinned"] = {"redis": "pve3", "user2": "pve2"}
        site, resolved = site_of(sim, 3, edit)
        driver = driver_of(sim, site)
        assert converge(driver, resolved.containers).ok
        where = {s.ctid: s.node for s in driver.list_containers()}
        assert where[102] == "pve1" and where[103] == "pve3" and where[200] == "pve3" and where[201] == "pve2"
    finally:
        sim.close()


def test_wait_ready_uses_the_injected_probe_and_times_out_clearly(seeded):
    sim, site, resolved, _, _ = seeded
    asked = []
    driver = driver_of(sim, site, probe=lambda node, ip: asked.append((node, ip)) or False)
    with pytest.raises(TemporaryError) as e:
        driver.wait_ready(203, timeout=0.05)
    assert "10.0.5.203" in str(e.value) and "did not answer" in str(e.value)
    assert asked and set(asked) == {(sim.cluster.cts[203].node, "10.0.5.203")}


def test_foreign_container_on_a_planned_ctid_is_not_touched():
    sim = new_sim(nodes=1)
    try:
        site, resolved = small_site(sim, users=1)
        sim.add_template("pve1", 200)  # someone else's CT sits on user1's CTID
        with sim.cluster.lock:
            sim.cluster.cts[200].conf.update(template="0", tags="prod", hostname="payroll")
        driver = driver_of(sim, site)
        report = converge(driver, resolved.containers)
        assert "not this site's" in report.errors[200] and "payroll" in report.errors[200]
        assert sim.cluster.cts[200].conf["hostname"] == "payroll"
    finally:
        sim.close()


def test_bad_token_and_untrusted_certificate_are_clear_errors():
    from aicommons.drivers.proxmox.api import PveApi

    sim = new_sim(nodes=1)
    try:
        host = f"127.0.0.1:{sim.api.port}"
        with pytest.raises(PermanentError) as e:
            PveApi(host, sim.token_id, "wrong", verify=sim.ca_file).guests()
        assert "driver.token_secret" in str(e.value)
        with pytest.raises(PermanentError) as e:
            PveApi(host, sim.token_id, sim.token_secret, verify=True).guests()  # system CAs: self-signed refused
        assert "driver.ca_file" in str(e.value)
    finally:
        sim.close()


def test_registry_builds_the_driver_from_site_yaml(seeded):
    from aicommons.drivers.registry import driver_for

    sim, site, resolved, _, _ = seeded
    d = driver_for(site)
    assert isinstance(d, ProxmoxDriver) and d.kind == "proxmox"
    assert {s.ctid for s in d.list_containers()} == {c.ctid for c in resolved.containers}


def test_shared_storage_one_template_clones_to_every_node():
    sim = Simulator(shared_storage=True).__enter__()
    try:
        sim.add_template("pve1", 9000)  # one template for the whole cluster
        site, resolved = small_site(sim, users=6)
        driver = driver_of(sim, site)
        assert converge(driver, resolved.containers).ok
        users = [c for c in resolved.containers if c.role == "user"]
        assert {sim.cluster.cts[c.ctid].node for c in users} == set(NODES)
        assert all("base-9000-disk-0" in sim.cluster.cts[c.ctid].conf["rootfs"] for c in users)
        clones = [t for t in sim.cluster.tasks.values() if t.type == "vzclone"]
        assert {t.node for t in clones} == {"pve1"} and {t.id for t in clones} == {"9000"}
    finally:
        sim.close()
