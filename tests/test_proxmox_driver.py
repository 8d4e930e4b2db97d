"""ProxmoxDriver through the engine (`aicommons.engine.api.apply_site`, the path the product runs)
against the simulated 3-node cluster (tests/pvesim), with a token limited to the ACL that
docs/proxmox.md documents (its pveum lines are run against the simulator's permission model).

Real: the engine, state store, renderer, Traefik file target (a temp dir), proxmoxer over HTTPS
(CA verified), paramiko SSH with host keys checked, the driver, placement, preflight and
firewall sync. Simulated: Proxmox VE itself — its API (schema-checked, permissions, tasks,
locks, firewall, storage types) and what `pct`/`ping` answer on its nodes (tests/pvesim).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from aicommons.drivers.proxmox.api import RetryPolicy
from aicommons.drivers.proxmox.driver import ProxmoxDriver
from aicommons.drivers.targets import LocalDirTarget
from aicommons.engine.api import apply_site, plan_site
from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.resolve import resolve
from aicommons.spec.load import load_site, load_text
from tests.pvesim import Simulator
from tests.pvesim.state import MiB, Storage

NODES = ("pve1", "pve2", "pve3")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "proxmox.md"
SIX = {"postgres": {}, "redis": {}, "qdrant": {}, "ollama": {}, "garage": {}, "searxng": {}}


def documented_acl() -> list[str]:
    """The pveum lines of docs/proxmox.md's least-privilege section, as an admin would paste them."""
    text = DOCS.read_text()
    section = text[text.index("## The API token, least privilege"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("pveum ")]


def new_sim(acl: str | None = "documented", templates: bool = True, **kw) -> Simulator:
    sim = Simulator(acl=None if acl == "documented" else acl, **kw).__enter__()
    if acl == "documented":
        for line in documented_acl():
            sim.pveum(line.replace("/storage/local-lvm", f"/storage/{sim.cluster.storage}"))
    if templates:
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


def write_site(sim: Simulator, path: Path, users: int, edit=None) -> Path:
    data = yaml.safe_load(sim.site_yaml(users))
    if edit:
        edit(data)
    path.mkdir(parents=True, exist_ok=True)
    site_file = path / "site.yml"
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return site_file


def engine_kw(sim: Simulator, site_file: Path, **driver_kw) -> dict:
    site, _ = load_site(site_file)
    return dict(driver=driver_of(sim, site, **driver_kw), backends=[],
                target=LocalDirTarget(site_file.parent / "traefik"), parallelism=8)


def failures(result) -> list[tuple[str, str]]:
    return [(o.step, o.detail) for o in result.errors]


def writes_in(sim: Simulator) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _status in sim.api.log if m != "GET"]


def assert_no_overcommit(sim: Simulator, reserve_mb: int = 2048) -> None:
    for name, node in sim.cluster.nodes.items():
        mem, cores = sim.cluster.committed(name)
        assert mem <= node.maxmem - reserve_mb * MiB, (name, mem)
        assert cores <= node.maxcpu, (name, cores)


def small(sim, tmp_path, users=6, edit=None):
    def both(d):
        d["services"] = dict(SIX)
        if edit:
            edit(d)
    site_file = write_site(sim, tmp_path, users, both)
    return site_file, engine_kw(sim, site_file)


# ---- the 50-user site with the documented least-privilege token -----------------------------

@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """The 50-user seed site applied once through the engine on a fresh 3-node cluster."""
    sim = new_sim()
    site_file = write_site(sim, tmp_path_factory.mktemp("seeded"), 50)
    kw = engine_kw(sim, site_file)
    sim.reset_counts()
    result = apply_site(site_file, **kw)
    counts = {"calls": sim.api.total(), "writes": sim.writes()}
    yield sim, site_file, kw, result, counts
    kw["driver"].close()
    sim.close()


def test_fifty_users_through_the_engine_with_the_documented_acl(seeded):
    sim, site_file, kw, result, counts = seeded
    assert result.ok, failures(result)
    resolved = result.plan.resolved
    site = resolved.site
    states = {s.ctid: s for s in kw["driver"].list_containers()}
    assert len(states) == len(resolved.containers) == 85  # 33 shared services, the portal, the gateway, 50 users
    for c in resolved.containers:
        s = states[c.ctid]
        assert (s.status, s.ip, s.memory_mb, s.cores, s.hostname) == ("running", c.ip, c.memory_mb, c.cores, c.hostname)
        ct = sim.cluster.cts[c.ctid]
        assert f"ip={c.ip}/24" in ct.conf["net0"] and "firewall=1" in ct.conf["net0"]
        assert ct.conf["tags"].split(";") == ["aicommons", c.role, site.name]  # set after create, allowed
        assert ct.conf["startup"].startswith(f"order={c.phase}") and ct.pool == "aicommons"
    assert "base-900" in sim.cluster.cts[200].conf["rootfs"] and sim.cluster.cts[200].disk_gb() == 100
    assert "base-" not in sim.cluster.cts[102].conf["rootfs"]  # postgres: created from the ostemplate
    assert len({s.node for s in states.values()}) == 3 and states[100].node == "pve3"  # ollama on the GPU node
    assert_no_overcommit(sim)
    # no refused call anywhere: the documented ACL covers everything the driver did
    assert not [entry for entry in sim.api.log if entry[2] == 403]
    print(f"\n50-user apply: {counts['calls']} API calls, {counts['writes']} writing")


def test_second_apply_writes_nothing(seeded):
    sim, site_file, kw, _, _ = seeded
    sim.reset_counts()
    again = apply_site(site_file, **kw)
    assert again.ok and again.plan.empty, again.plan.counts()
    assert sim.writes() == 0 and sim.api.total() > 0  # it did read
    print(f"\nsecond apply: {sim.api.total()} API calls, {sim.writes()} writing")


def test_a_firewall_change_touches_only_the_rules_that_changed(seeded):
    from aicommons.render.firewall import OPERATORS_SET

    sim, site_file, kw, _, _ = seeded
    want = [dict(r) for r in sim.cluster.fw_rules[205]]
    assert [r["type"] for r in want][:2] == ["in", "in"] and want[-1]["action"] == "DROP"  # order as rendered
    assert want[0]["source"] == "10.0.4.10"  # Traefik's address, on the container itself
    # someone edits one rule of CT 205 and adds one to CT 206 by hand
    with sim.cluster.lock:
        sim.cluster.fw_rules[205][3]["dport"] = "1"
        sim.cluster.fw_rules[206].append({"type": "in", "action": "ACCEPT", "dport": "22", "enable": 1})
    sim.reset_counts()
    result = apply_site(site_file, **kw)
    assert result.ok, failures(result)
    n205, n206 = sim.cluster.cts[205].node, sim.cluster.cts[206].node
    assert sorted(writes_in(sim)) == sorted([
        ("PUT", f"/api2/json/nodes/{n205}/lxc/205/firewall/rules/3"),
        ("DELETE", f"/api2/json/nodes/{n206}/lxc/206/firewall/rules/{len(want)}")])
    assert [{k: v for k, v in r.items() if k != "ipversion"} for r in sim.cluster.fw_rules[205]] == \
        [{k: v for k, v in r.items() if k != "ipversion"} for r in want]
    # the site adds an operator address: one entry in the operators' set of each shared container
    data = yaml.safe_load(site_file.read_text())
    data["network"].setdefault("traefik", {})["operator_allow"] = ["10.0.0.0/16", "192.0.2.7/32"]
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    sim.reset_counts()
    result = apply_site(site_file, **kw)
    assert result.ok, failures(result)
    shared = sorted(c.ctid for c in result.plan.resolved.containers if c.role == "shared")
    assert sorted(writes_in(sim)) == sorted(
        ("POST", f"/api2/json/nodes/{sim.cluster.cts[c].node}/lxc/{c}/firewall/ipset/{OPERATORS_SET}") for c in shared)
    sim.reset_counts()  # PVE stores 192.0.2.7 (no /32): compared as stored, so nothing is left to do
    assert apply_site(site_file, **kw).plan.empty and sim.writes() == 0


def test_rules_are_created_in_the_rendered_order_although_pve_inserts_at_the_top(seeded):
    from aicommons.render.firewall import firewall_plan

    sim, site_file, kw, result, _ = seeded
    plan = firewall_plan(result.plan.resolved)
    for ctid in (102, 205):
        assert [(r["action"], r.get("source"), r.get("dest"), r.get("dport")) for r in sim.cluster.fw_rules[ctid]] == \
            [(x.action, x.source, x.dest, x.dport) for x in plan.container(ctid).rules]


def test_drift_is_planned_and_set_back(seeded):
    sim, site_file, kw, _, _ = seeded
    with sim.cluster.lock:  # someone changes memory by hand in the GUI
        sim.cluster.cts[205].conf["memory"] = "4096"
    drift = plan_site(site_file, **{k: v for k, v in kw.items() if k != "parallelism"})
    assert [(c.address, c.action) for c in drift.changes if c.action != "no-op"] == [("container.205", "update")]
    assert apply_site(site_file, **kw).ok
    assert sim.cluster.cts[205].conf["memory"] == "8192"


def test_use_comes_from_one_cluster_resources_read(seeded):
    """The portal's memory/CPU: PVE's `mem` (bytes) and `cpu` (a fraction of the CT's cores, the
    schema's fraction_as_percentage) for running containers of this site only."""
    sim, _, kw, _, _ = seeded
    with sim.cluster.lock:
        sim.cluster.cts[201].load = 0.25
    sim.reset_counts()
    use = kw["driver"].usage([201, 202, 9999])
    assert sim.api.total() == 1  # one read for them all
    ct = sim.cluster.cts[201]
    assert set(use) == {201, 202} and use[201].cpu_percent == 25.0 and use[202].cpu_percent == 0.0
    assert use[201].memory_limit_mb == ct.mem_bytes() // 2**20 and 0 < use[201].memory_mb <= use[201].memory_limit_mb


def test_exec_and_push_go_over_ssh_to_the_hosting_node(seeded):
    sim, site_file, kw, _, _ = seeded
    driver = kw["driver"]
    node = driver.node_of(201)
    driver.push(201, b"KEY=value\n", "/opt/aicommons/user2/.env", 0o600)
    assert sim.cluster.cts[201].fs["/opt/aicommons/user2/.env"] == b"KEY=value\n"
    assert sim.cluster.cts[201].fs["/opt/aicommons/user2/.env:mode"] == b"0600"
    res = driver.exec(201, ["cat", "/opt/aicommons/user2/.env"])
    assert res.ok and res.stdout == "KEY=value\n"
    assert sim.records[-1].node == node and sim.records[-1].command.startswith("pct exec 201 -- cat")


def test_readiness_needs_no_icmp_when_the_datacenter_firewall_drops_it(seeded):
    sim, site_file, kw, _, _ = seeded
    driver = kw["driver"]
    with sim.cluster.lock:
        sim.cluster.fw_options.setdefault("cluster", {})["enable"] = "1"
    try:
        node = driver.node_of(203)
        assert not driver.shell.run(node, ["ping", "-c", "1", "-W", "1", "10.0.5.203"]).ok  # dropped
        driver.wait_ready(203, timeout=2)  # the address is read from PVE: ready all the same
        driver.stop(203)
        sim.reset_counts()
        result = apply_site(site_file, **kw)  # started again and found ready under the firewall
        assert result.ok, failures(result)
    finally:
        with sim.cluster.lock:
            sim.cluster.fw_options["cluster"]["enable"] = "0"


def test_wait_ready_uses_the_injected_probe_and_times_out_clearly(seeded):
    sim, site_file, _, _, _ = seeded
    asked = []
    site, _ = load_site(site_file)
    driver = driver_of(sim, site, probe=lambda node, ctid, ip: asked.append((node, ctid, ip)) or False)
    with pytest.raises(TemporaryError) as e:
        driver.wait_ready(203, timeout=0.05)
    assert "10.0.5.203" in str(e.value) and "did not answer" in str(e.value)
    assert asked and set(asked) == {(sim.cluster.cts[203].node, 203, "10.0.5.203")}


def test_registry_builds_the_driver_from_site_yaml(seeded):
    from aicommons.drivers.registry import driver_for

    sim, site_file, _, result, _ = seeded
    site, _ = load_site(site_file)
    d = driver_for(site)
    assert isinstance(d, ProxmoxDriver) and d.kind == "proxmox"
    assert {s.ctid for s in d.list_containers()} == {c.ctid for c in result.plan.resolved.containers}


def test_rule_sync_edits_any_list_into_any_other_with_pve_insert_at_top_semantics():
    """Random rule lists: after one sync PVE holds exactly the wanted order; a second sync writes nothing;
    a sync writes no more than rewriting the list would."""
    import random

    from aicommons.drivers.proxmox.api import PveApi
    from aicommons.drivers.proxmox.firewall import FirewallReport, _sync_rules

    sim = new_sim(nodes=1, acl="admin", templates=False)
    try:
        api = PveApi(f"127.0.0.1:{sim.api.port}", sim.token_id, sim.token_secret, verify=sim.ca_file)
        api.call("POST", "cluster/firewall/groups", group="gg")
        path = "cluster/firewall/groups/gg"
        pool = [{"type": "in", "action": a, "dport": str(p), "enable": 1} for a in ("ACCEPT", "DROP") for p in range(8)]
        rng = random.Random(17)
        for _ in range(25):
            want = rng.sample(pool, rng.randint(0, 7))
            before = len(api.get(path))
            rep = FirewallReport()
            _sync_rules(api, path, want, rep)
            got = [{k: r[k] for k in ("type", "action", "dport", "enable")} for r in api.get(path)]
            assert got == want
            assert rep.writes <= before + 2 * len(want)
            again = FirewallReport()
            _sync_rules(api, path, want, again)
            assert again.writes == 0
    finally:
        sim.close()


# ---- refused before any change ---------------------------------------------------------------

def test_plan_that_does_not_fit_is_refused_by_the_engine_before_any_change(tmp_path):
    sim = new_sim(mem_gb=96, cores=48)
    try:
        site_file = write_site(sim, tmp_path, 50)
        kw = engine_kw(sim, site_file)
        sim.reset_counts()
        with pytest.raises(PermanentError) as e:
            apply_site(site_file, **kw)
        text = str(e.value)
        assert "does not fit" in text and "MiB memory" in text and "short by" in text
        assert sim.writes() == 0 and len(sim.cluster.cts) == 3
    finally:
        sim.close()


UNDER = ['role add Some -privs "VM.Allocate VM.Audit VM.Config.Options Pool.Audit"',
         "acl modify /pool/aicommons -user aicommons@pve -role Some",
         'role add Look -privs "Sys.Audit Datastore.Audit"',
         "acl modify / -user aicommons@pve -role Look -propagate 0",  # the old docs: node sizes unreadable
         "acl modify /storage -user aicommons@pve -role Look",
         "user token add aicommons@pve apply --privsep 0"]


def test_proxmox_check_reports_every_missing_privilege_and_apply_refuses(tmp_path, capsys):
    from aicommons.cli import main

    sim = new_sim(acl=None)
    try:
        for line in UNDER:
            sim.pveum(line)
        site_file = write_site(sim, tmp_path, 3)
        sim.reset_counts()
        assert main(["proxmox", "check", "--file", str(site_file)]) == 1
        out = capsys.readouterr().out
        for missing in ("VM.Clone on /pool/aicommons", "VM.PowerMgmt on /pool/aicommons", "VM.Config.Network",
                        "Datastore.AllocateSpace on /storage/local-lvm", "SDN.Use on /sdn/zones/localnetwork/vmbr0",
                        "Sys.Audit on /nodes/pve1", "Sys.Audit on /nodes/pve3",
                        "missing VM.Clone on /vms/9000"):
            assert missing in out, missing
        assert "Mapping.Audit" in out and "note:" in out  # optional: a note, not a problem
        assert sim.writes() == 0
        kw = engine_kw(sim, site_file)
        with pytest.raises(PermanentError) as e:
            apply_site(site_file, **kw)
        assert "nothing was changed" in str(e.value) and "Sys.Audit on /nodes/pve2" in str(e.value)
        assert sim.writes() == 0 and len(sim.cluster.cts) == 3
        # Look grants Datastore.Audit on / too: more than the site needs there, refused
        assert "more than the site needs on /: Datastore.Audit" in out
        for line in documented_acl():  # the documented ACL on top, Look off /: ready
            if "role add" not in line or "Aicommons" in line:
                sim.pveum(line)
        sim.pveum("acl delete / -user aicommons@pve -role Look")
        assert main(["proxmox", "check", "--file", str(site_file)]) == 0
    finally:
        sim.close()


def test_a_token_with_sys_modify_on_slash_is_refused_until_narrowed(tmp_path, capsys):
    """The previous docs granted Sys.Modify on /: with it the token could create a privileged container
    (pve-container create_vm) or switch the datacenter firewall off (pve-firewall rules_modify_permissions).
    The preflight refuses it, naming the fix; the docs' `role modify` line makes it pass."""
    from aicommons.cli import main

    sim = new_sim(acl=None)
    try:
        for line in documented_acl():
            sim.pveum(line.replace('AicommonsCluster -privs "Sys.Audit"', 'AicommonsCluster -privs "Sys.Audit Sys.Modify"'))
        site_file = write_site(sim, tmp_path, 3)
        sim.reset_counts()
        assert main(["proxmox", "check", "--file", str(site_file)]) == 1
        out = capsys.readouterr().out
        assert "problem: the token holds more than the site needs on /: Sys.Modify" in out
        assert "privileged containers" in out and "pveum role modify AicommonsCluster -privs Sys.Audit" in out
        with pytest.raises(PermanentError) as e:
            apply_site(site_file, **engine_kw(sim, site_file))
        assert "Sys.Modify" in str(e.value) and sim.writes() == 0
        fix = DOCS.read_text().split("Fix an existing token from an earlier version:")[1]
        sim.pveum(re.search(r"```sh\n(.*?)\n```", fix, re.S).group(1))  # the line docs/proxmox.md gives
        assert main(["proxmox", "check", "--file", str(site_file)]) == 0
    finally:
        sim.close()


def test_datacenter_objects_of_an_earlier_version_are_noted_with_roots_commands(seeded, capsys):
    from aicommons.cli import main

    sim, site_file, kw, _, _ = seeded
    with sim.cluster.lock:  # what an earlier version left on the datacenter
        sim.cluster.fw_ipsets[("cluster", "aic-users")] = [{"cidr": "10.0.5.200"}]
        sim.cluster.fw_groups["aic-user"] = [{"type": "in", "action": "ACCEPT", "enable": 1}]
    sim.reset_counts()
    try:
        assert main(["proxmox", "check", "--file", str(site_file)]) == 0  # a note, not a problem
        out = capsys.readouterr().out
        assert "note: datacenter firewall objects of an earlier aicommons version" in out
        assert "pvesh delete /cluster/firewall/ipset/aic-users --force 1" in out
        assert "delete the sections of group aic-user from /etc/pve/firewall/cluster.fw" in out.replace("\n", " ")
        assert sim.writes() == 0
    finally:
        with sim.cluster.lock:
            sim.cluster.fw_ipsets.pop(("cluster", "aic-users"))
            sim.cluster.fw_groups.pop("aic-user")


def test_nfs_storage_is_refused_naming_the_storage(tmp_path):
    sim = new_sim(storage=Storage("nfs-ct", "nfs", "rootdir,images", shared=True))
    try:
        site_file, kw = small(sim, tmp_path)
        with pytest.raises(PermanentError) as e:
            apply_site(site_file, **kw)
        assert "storage 'nfs-ct' is of type nfs" in str(e.value) and "linked clones" in str(e.value)
        assert len(sim.cluster.cts) == 3 and sim.writes() == 0
    finally:
        sim.close()


def test_a_template_outside_the_pool_is_reported(tmp_path):
    sim = new_sim(templates=False)
    try:
        for i, node in enumerate(NODES):
            sim.add_template(node, 9000 + i, pool=None)
        site_file, kw = small(sim, tmp_path)
        with pytest.raises(PermanentError) as e:
            apply_site(site_file, **kw)
        # VM.Audit on /vms (docs) shows the template, and the check says what to do with it
        assert "missing VM.Clone on /vms/9000" in str(e.value) and "add it to pool aicommons" in str(e.value)
    finally:
        sim.close()


# ---- failures during apply -------------------------------------------------------------------

def test_tags_are_set_after_create_and_a_crash_in_between_is_finished_not_refused(tmp_path):
    sim = new_sim()
    try:
        site_file, kw = small(sim, tmp_path, users=1)
        with sim.cluster.lock:  # an earlier run created postgres (102) and died before tagging it
            from tests.pvesim.state import Ct

            sim.cluster.cts[102] = Ct(102, "pve1", {"hostname": "postgres", "memory": "512", "cores": "1",
                                                    "rootfs": "local-lvm:vm-102-disk-0,size=8G",
                                                    "description": "aicommons site " + load_site(site_file)[0].name},
                                      pool="aicommons")
        result = apply_site(site_file, **kw)
        assert result.ok, failures(result)
        assert sim.cluster.cts[102].conf["tags"].split(";")[:2] == ["aicommons", "shared"]
        creates = [t for t in sim.cluster.tasks.values() if t.type == "vzcreate"]
        assert "102" not in {t.id for t in creates}  # adopted, not created twice
    finally:
        sim.close()


def test_a_task_ending_with_warnings_succeeds_and_the_warning_is_shown(tmp_path):
    sim = new_sim()
    try:
        site_file, kw = small(sim, tmp_path, users=1)
        sim.warn_next_task("vzcreate", "unable to set MTU on eth0")
        result = apply_site(site_file, **kw)
        assert result.ok, failures(result)
        shown = [o.detail for o in result.outcomes.values() if "unable to set MTU" in o.detail]
        assert len(shown) == 1 and "warnings: 1" in shown[0]
    finally:
        sim.close()


def test_retries_are_bounded_once_and_only_for_what_pve_refused_before_changing(tmp_path):
    sim = new_sim()
    try:
        site_file, kw = small(sim, tmp_path)
        # someone else's backup holds pve1's template for a moment: PVE refuses the clone before changing anything
        sim.fail_http(r"/lxc/9000/clone$", method="POST", message="CT is locked (backup)", times=2)
        sim.fail_http(r"/cluster/resources$", method="GET", status=503, message="Service Unavailable", times=2)
        sim.fail_http(r"/lxc/20[0-9]/config$", method="PUT", times=1)  # a write that failed: not repeated
        sim.reset_counts()
        result = apply_site(site_file, **kw)
        assert all(f.times == 0 for f in sim.cluster.faults)
        (bad,) = [o for o in result.errors if o.status == "failed"]
        assert "Internal Server Error" in bad.detail and bad.attempts == 1  # the engine did not retry it either
        puts = [p for m, p, st in sim.api.log if m == "PUT" and p.endswith("/config") and st == 500]
        assert len(puts) == 1
        clones = [st for m, p, st in sim.api.log if m == "POST" and "/lxc/9000/clone" in p]
        assert 500 in clones and clones[-1] == 200  # locked: refused before any change, so retried
        again = apply_site(site_file, **kw)  # the next run reads what exists and finishes
        assert again.ok, failures(again)
        assert_no_overcommit(sim)
    finally:
        sim.close()


def test_a_lost_answer_to_a_write_is_not_repeated():
    from aicommons.drivers.proxmox.api import PveApi

    sim = new_sim(nodes=1)
    try:
        api = PveApi(f"127.0.0.1:{sim.api.port}", sim.token_id, sim.token_secret, verify=sim.ca_file,
                     retry=RetryPolicy(base=0.01))
        api._args["timeout"] = 0.3  # the answer never comes in time
        sim.cluster.task_seconds["*"] = 0
        import time as _t

        orig = sim.api.call

        def slow(method, path, params, headers):
            if method == "POST":
                _t.sleep(0.6)
            return orig(method, path, params, headers)

        sim.api.call = slow
        with pytest.raises(PermanentError) as e:
            api.call("POST", "pools", poolid="other")
        assert "not repeated" in str(e.value)
        _t.sleep(0.5)
        assert sum(n for (m, p), n in sim.api.counts.items() if m == "POST" and p == "/pools") == 1
    finally:
        sim.close()


def test_a_timed_out_task_is_stopped_and_reported_then_the_next_apply_converges(tmp_path):
    sim = new_sim()
    try:
        site_file, kw = small(sim, tmp_path)
        kw["driver"].api.task_timeout = 1
        sim.hang_next_task("vzclone")
        result = apply_site(site_file, **kw)
        timed_out = [o for o in result.errors if "did not finish within 1s" in o.detail]
        assert len(timed_out) == 1 and "it was stopped" in timed_out[0].detail
        assert "simulated hang" in timed_out[0].detail and timed_out[0].attempts == 1
        assert not sim.cluster.hung and all(c.lock is None for c in sim.cluster.cts.values())
        stopped = [t for t in sim.cluster.tasks.values() if t.exitstatus == "interrupted by signal"]
        assert len(stopped) == 1
        again = apply_site(site_file, **kw)
        assert again.ok, failures(again)
        sim.reset_counts()
        assert apply_site(site_file, **kw).plan.empty and sim.writes() == 0
    finally:
        sim.close()


def test_node_full_is_reported_then_placed_elsewhere(tmp_path):
    sim = new_sim()
    try:
        site_file, kw = small(sim, tmp_path)
        sim.fill_node("pve2")  # stays full
        result = apply_site(site_file, **kw)
        assert result.ok, failures(result)  # the engine's retry placed them elsewhere
        assert any("pve2" in (o.detail or "") or o.attempts > 1 for o in result.outcomes.values())
        assert not any(c.node == "pve2" for c in sim.cluster.cts.values() if not c.template)
        assert_no_overcommit(sim)
    finally:
        sim.close()


def test_pinned_nodes_are_honoured(tmp_path):
    sim = new_sim()
    try:
        def edit(d):
            d["services"]["postgres"] = {"node": "pve1"}
            d["users"][0]["node"] = "pve3"
            d["driver"]["pinned"] = {"redis": "pve3", "user2": "pve2"}
        site_file, kw = small(sim, tmp_path, users=3, edit=edit)
        assert apply_site(site_file, **kw).ok
        where = {s.ctid: s.node for s in kw["driver"].list_containers()}
        assert where[102] == "pve1" and where[103] == "pve3" and where[200] == "pve3" and where[201] == "pve2"
    finally:
        sim.close()


def test_foreign_container_on_a_planned_ctid_is_not_touched(tmp_path):
    sim = new_sim(nodes=1)
    try:
        site_file, kw = small(sim, tmp_path, users=1)
        sim.add_template("pve1", 200)  # someone else's CT sits on user1's CTID
        with sim.cluster.lock:
            sim.cluster.cts[200].conf.update(template="0", tags="prod", hostname="payroll")
        result = apply_site(site_file, **kw)
        (bad,) = [o for o in result.errors if o.step == "container.200"]
        assert "not this site's" in bad.detail and "payroll" in bad.detail
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


def test_shared_storage_one_template_clones_to_every_node(tmp_path):
    sim = new_sim(shared_storage=True, templates=False)
    try:
        sim.add_template("pve1", 9000)  # one template for the whole cluster
        site_file, kw = small(sim, tmp_path)
        result = apply_site(site_file, **kw)
        assert result.ok, failures(result)
        users = [c for c in result.plan.resolved.containers if c.role == "user"]
        assert {sim.cluster.cts[c.ctid].node for c in users} == set(NODES)
        assert all("base-9000-disk-0" in sim.cluster.cts[c.ctid].conf["rootfs"] for c in users)
        clones = [t for t in sim.cluster.tasks.values() if t.type == "vzclone"]
        assert {t.node for t in clones} == {"pve1"} and {t.id for t in clones} == {"9000"}
    finally:
        sim.close()


def test_proxmox_check_reads_next_id_as_the_object_pve_returns(tmp_path, capsys):
    """GET /cluster/options decodes `next-id` into {lower, upper} (pve-cluster parse_datacenter_config);
    the check read it as a string before and so never saw a range that covers the site's CTIDs."""
    from aicommons.cli import main

    sim = new_sim()
    try:
        sim.cluster.datacenter["next-id"] = "lower=150,upper=5000"
        site_file = write_site(sim, tmp_path, 3)
        main(["proxmox", "check", "--file", str(site_file)])
        out = capsys.readouterr().out
        assert "lie in the cluster's next-id range [150, 5000)" in out
    finally:
        sim.close()


def test_placement_counts_qemu_vms_and_guests_outside_the_pool(tmp_path):
    """Issue 24: placement counted only the pool's containers, so a shared cluster was overcommitted.
    Here pve1 holds another team's 40 GiB container (outside the pool) and pve2 a 40 GiB QEMU VM; the
    documented ACL's read-only VM.Audit on /vms lets the driver see both, and the apply must not
    promise any node more memory than it has."""
    sim = new_sim(mem_gb=64)
    try:
        sim.add_foreign_ct("pve1", 7001, 40 * 1024)
        sim.add_vm("pve2", 7002, 40 * 1024)
        site_file, kw = small(sim, tmp_path, users=4)
        result = apply_site(site_file, **kw)
        assert result.ok, failures(result)
        assert_no_overcommit(sim)
    finally:
        sim.close()


def test_without_vm_audit_on_vms_the_nodes_use_now_is_the_floor(tmp_path):
    sim = new_sim(mem_gb=64, acl=None)
    try:
        for line in documented_acl():
            if " /vms " not in line:
                sim.pveum(line)
        sim.add_foreign_ct("pve1", 7001, 60 * 1024)  # 15 GiB of it in use now (a quarter, as the sim models)
        caps = kw_driver(sim, tmp_path).capacities()
        assert caps["pve1"].used_mem_mb >= 15 * 1024 + 2048  # the host's own use and the foreign guest's
        assert caps["pve2"].used_mem_mb < 4096
    finally:
        sim.close()


def kw_driver(sim, tmp_path):
    site_file = write_site(sim, tmp_path, 1)
    return engine_kw(sim, site_file)["driver"]


def test_the_os_template_is_checked_on_every_node(tmp_path, capsys):
    """Issue 24: `local` is not shared, so each node has its own OS templates; one downloaded on pve1
    only made every create on pve2/pve3 fail mid-apply."""
    from aicommons.cli import main

    sim = new_sim()
    try:
        with sim.cluster.lock:
            for node in ("pve2", "pve3"):
                sim.cluster.templates_on_disk[node].clear()
        site_file = write_site(sim, tmp_path, 3)
        assert main(["proxmox", "check", "--file", str(site_file)]) == 1
        out = capsys.readouterr().out
        assert "is not on node(s) pve2, pve3" in out and "pveam download" in out
    finally:
        sim.close()


def test_a_template_without_keyctl_is_reported(tmp_path, capsys):
    """Issue 24: a user template without keyctl=1 passed the preflight, and Docker failed in every clone."""
    from aicommons.cli import main

    sim = new_sim(templates=False)
    try:
        for i, node in enumerate(NODES):
            sim.add_template(node, 9000 + i, features="nesting=1")
        site_file = write_site(sim, tmp_path, 3)
        assert main(["proxmox", "check", "--file", str(site_file)]) == 1
        out = capsys.readouterr().out
        assert "features must include keyctl=1" in out
        assert "`pct set 9000 --features nesting=1,keyctl=1` (root-only)" in out  # the fix, as root
        with sim.cluster.lock:  # root runs it on every node
            for i in range(len(NODES)):
                sim.cluster.cts[9000 + i].conf["features"] = "nesting=1,keyctl=1"
        assert main(["proxmox", "check", "--file", str(site_file)]) == 0
        with sim.cluster.lock:  # nesting missing is refused the same way
            sim.cluster.cts[9001].conf["features"] = "keyctl=1"
        assert main(["proxmox", "check", "--file", str(site_file)]) == 1
        assert "CT 9001 on pve2: features must include nesting=1" in capsys.readouterr().out
    finally:
        sim.close()


def test_a_lost_clone_answer_is_recovered_once_the_task_ends(tmp_path):
    """PVE adds a clone to its pool only when the clone task ends (pve-container clone_vm:
    add_vm_to_pool in the worker), so while it runs the token cannot see it. A clone whose HTTP answer
    was lost fails that run without repeating the write; the next apply, after the task ended,
    adopts the clone instead of cloning again."""
    import time as _t

    sim = new_sim(nodes=1)
    try:
        site_file, kw = small(sim, tmp_path, users=1)
        sim.cluster.task_seconds["vzclone"] = 1.5
        orig = sim.api.call

        def lose_clone_answer(method, path, params, headers):
            out = orig(method, path, params, headers)
            if method == "POST" and path.endswith("/clone"):
                sim.api.call = orig  # only the first clone's answer is lost
                raise ConnectionResetError("answer lost")
            return out

        sim.api.call = lose_clone_answer
        first = apply_site(site_file, **kw)
        (lost,) = [o for o in first.errors if o.step.startswith("container.") and "not repeated" in (o.detail or "")]
        ctid = int(lost.step.split(".")[1])
        with sim.cluster.lock:
            clones = [t for t in sim.cluster.tasks.values() if t.type == "vzclone"]
            in_pool_meanwhile = sim.cluster.cts[ctid].pool
        assert in_pool_meanwhile is None  # invisible to the token while the task runs, as on PVE
        deadline = _t.monotonic() + 30
        while sim.cluster.cts[ctid].pool != "aicommons":
            assert _t.monotonic() < deadline, "the clone task never ended"
            _t.sleep(0.1)
        second = apply_site(site_file, **kw)
        assert second.ok, failures(second)
        with sim.cluster.lock:
            now = [t for t in sim.cluster.tasks.values() if t.type == "vzclone"]
            assert len(now) == len(clones) + 1  # the other user's clone, not this one again: adopted
            assert sim.cluster.cts[ctid].conf["tags"].split(";")[0] == "aicommons"
    finally:
        sim.close()
