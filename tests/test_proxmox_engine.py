"""The engine (`aicommons.engine.api.apply_site`) driving ProxmoxDriver on the simulated cluster.

Real: the engine, state store, renderer, Traefik file target (a temp dir), proxmoxer over HTTPS,
paramiko SSH. Simulated: Proxmox VE (tests/pvesim). Tenancy back ends are left out (none given).
"""

from __future__ import annotations

import pytest
import yaml

from aicommons.drivers.targets import LocalDirTarget
from aicommons.engine.api import apply_site, plan_site
from aicommons.plan import addresses as A
from tests.test_proxmox_driver import driver_of, new_sim


@pytest.fixture
def sim():
    s = new_sim()
    yield s
    s.close()


def _site(sim, tmp_path, users: int):
    from aicommons.spec.load import load_site

    data = yaml.safe_load(sim.site_yaml(users))
    data["services"] = {"postgres": {}, "redis": {}, "qdrant": {}, "ollama": {}, "garage": {}, "searxng": {}}
    site_file = tmp_path / "site.yml"
    site_file.write_text(yaml.safe_dump(data, sort_keys=False))
    site, _ = load_site(site_file)
    return site_file, dict(driver=driver_of(sim, site), backends=[], target=LocalDirTarget(tmp_path / "traefik"))


def _changes(plan):
    return {c.address: c.action for c in plan.changes if c.action != "no-op"}


def test_apply_site_creates_then_is_idempotent_and_sees_drift(sim, tmp_path):
    site_file, kw = _site(sim, tmp_path, 3)
    first = apply_site(site_file, **kw)
    assert first.ok, [(o.step, o.detail) for o in first.errors]
    assert {c.ctid for c in first.plan.resolved.containers} <= set(sim.cluster.cts)
    assert all(sim.cluster.cts[c.ctid].status == "running" for c in first.plan.resolved.containers)
    assert any(r.argv[:2] == ["docker", "compose"] and r.argv[-3:] == ["up", "-d", "--remove-orphans"]
               for r in sim.records)  # the engine's bundle step ran over our SSH transport

    sim.reset_counts()
    again = plan_site(site_file, **kw)
    assert again.empty, again.counts()
    assert apply_site(site_file, **kw).ok and sim.writes() == 0

    with sim.cluster.lock:  # memory changed by hand
        sim.cluster.cts[200].conf["memory"] = "2048"
    drift = plan_site(site_file, **kw)
    assert [(c.address, c.action) for c in drift.changes if c.action != "no-op"] == [(A.container(200), "update")]
    assert apply_site(site_file, **kw).ok
    assert sim.cluster.cts[200].conf["memory"] == "8192"


def _addresses(entries) -> set[str]:
    """The addresses an ipset's entries cover (the plan merges consecutive addresses into CIDRs)."""
    import ipaddress

    return {str(a) for e in entries for a in ipaddress.ip_network(e["cidr"])}


def test_firewall_is_an_engine_step_applied_once_and_drift_is_planned(sim, tmp_path):
    from aicommons.render.firewall import USERS_SET

    site_file, kw = _site(sim, tmp_path, 3)
    first = plan_site(site_file, **kw)
    fw = first.steps["firewall"]
    assert fw.action == "create" and {A.container(c.ctid) for c in first.resolved.containers} <= fw.deps
    assert not sim.cluster.fw_groups and not sim.cluster.fw_rules  # planning wrote nothing
    result = apply_site(site_file, **kw)
    assert result.ok, [(o.step, o.detail) for o in result.errors]
    users = {c.ip for c in result.plan.resolved.containers if c.role == "user"}
    # each shared service users reach holds its own copy of the users' set; nothing on the datacenter
    # (cluster objects need Sys.Modify on /, which the documented token does not have)
    copies = {k[0]: _addresses(v) for k, v in sim.cluster.fw_ipsets.items() if k[1] == USERS_SET}
    assert copies and all(v == users for v in copies.values()) and "cluster" not in copies
    assert not sim.cluster.fw_groups and not [k for k in sim.cluster.fw_ipsets if k[0] == "cluster"]
    for c in result.plan.resolved.containers:  # every container got its rules and options
        assert sim.cluster.fw_rules.get(c.ctid), c.ctid
        assert sim.cluster.fw_options[str(c.ctid)]["policy_in"] == "DROP"

    sim.reset_counts()
    again = plan_site(site_file, **kw)
    assert "firewall" not in again.steps and again.empty, _changes(again)
    assert sim.writes() == 0

    with sim.cluster.lock:  # someone deletes a rule of user container 201 in the GUI
        sim.cluster.fw_rules[201].pop()
    drift = plan_site(site_file, **kw)
    assert _changes(drift) == {"firewall.container.201": "update"}
    assert apply_site(site_file, **kw).ok
    assert plan_site(site_file, **kw).empty


def test_drivers_without_a_firewall_get_no_firewall_step(sim, tmp_path):
    from aicommons.drivers.fake import FakeDriver

    site_file, kw = _site(sim, tmp_path, 2)
    plan = plan_site(site_file, **{**kw, "driver": FakeDriver(tmp_path / "fake")})
    assert plan.steps and not any(s.kind == "firewall" for s in plan.steps.values())
    assert "firewall" not in {c.address for c in plan.changes}


def _archives(sim, ctid):
    return [v for vols in sim.cluster.volumes.values() for v in vols.values() if v["vmid"] == ctid]


def test_users_remove_archives_with_vzdump_unless_purged(sim, tmp_path):
    from aicommons.ops.users import remove_user

    site_file, kw = _site(sim, tmp_path, 3)
    assert apply_site(site_file, **kw).ok
    ctids = {c.name: c.ctid for c in plan_site(site_file, **kw).resolved.containers if c.role == "user"}
    kept, purged = sorted(ctids)[:2]

    result = remove_user(site_file, kept, driver=kw["driver"], backends=[], target=kw["target"])
    assert result.ok, [(o.step, o.detail) for o in result.errors]
    assert ctids[kept] not in sim.cluster.cts  # container gone ...
    (arch,) = _archives(sim, ctids[kept])  # ... its data kept as one protected vzdump archive
    assert arch["volid"].startswith(f"local:backup/vzdump-lxc-{ctids[kept]}-") and arch["volid"].endswith(".tar.zst")
    assert arch["protected"] == 1 and kept in arch["notes"]
    assert [c.ctid for c in kw["driver"].list_containers() if c.ctid == ctids[kept]] == []
    vzdumps = [t for t in sim.cluster.tasks.values() if t.type == "vzdump"]
    assert [t.id for t in vzdumps] == [str(ctids[kept])] and vzdumps[0].exitstatus == "OK"
    copies = [_addresses(v) for k, v in sim.cluster.fw_ipsets.items() if k[1] == "aic-users"]
    want = {c.ip for c in plan_site(site_file, **kw).resolved.containers if c.role == "user"}
    assert copies and all(ips == want for ips in copies)  # the firewall followed

    result = remove_user(site_file, purged, purge=True, driver=kw["driver"], backends=[], target=kw["target"])
    assert result.ok, [(o.step, o.detail) for o in result.errors]
    assert ctids[purged] not in sim.cluster.cts and _archives(sim, ctids[purged]) == []
    assert len([t for t in sim.cluster.tasks.values() if t.type == "vzdump"]) == 1
    assert plan_site(site_file, **kw).empty


def test_archive_to_a_storage_without_backups_is_refused_and_nothing_is_destroyed(sim, tmp_path):
    from aicommons.errors import PermanentError

    site_file, kw = _site(sim, tmp_path, 1)
    assert apply_site(site_file, **kw).ok
    driver = kw["driver"]
    driver.backup_storage = "local-lvm"  # holds container disks, not backups
    driver.stop(200)
    try:
        driver.archive(200)
        raise AssertionError("archive to local-lvm should be refused")
    except PermanentError as exc:
        assert "driver.backup_storage" in str(exc) and "local-lvm" in str(exc)
    assert 200 in sim.cluster.cts and _archives(sim, 200) == []


def test_a_sixth_protected_archive_is_refused_before_anything_changes(sim, tmp_path):
    """Issue 24: without Datastore.Allocate on the backup storage PVE keeps at most 5 protected
    backups per guest there (pve-storage get_max_protected_backups), and CTIDs are reused with
    addresses. The removal must be refused whole, with what to grant, not stopped half-way."""
    from aicommons.errors import PermanentError
    from aicommons.ops.users import remove_user

    site_file, kw = _site(sim, tmp_path, 2)
    assert apply_site(site_file, **kw).ok
    ctid = 200
    node = sim.cluster.cts[ctid].node
    with sim.cluster.lock:  # five earlier people at this address, each archived when they left
        for i in range(5):
            volid = f"local:backup/vzdump-lxc-{ctid}-2026_0{i + 1}_01-00_00_00.tar.zst"
            sim.cluster.volumes.setdefault((node, "local"), {})[volid] = {
                "volid": volid, "content": "backup", "format": "tar.zst", "vmid": ctid, "ctime": 1 + i,
                "size": 1, "protected": 1}
    user = next(c.name for c in plan_site(site_file, **kw).resolved.containers if c.ctid == ctid)
    before = sim.writes()
    try:
        remove_user(site_file, user, driver=kw["driver"], backends=[], target=kw["target"])
        raise AssertionError("the removal should have been refused")
    except PermanentError as exc:
        assert "5 protected archives" in str(exc) and "Datastore.Allocate on /storage/local" in str(exc)
    assert sim.cluster.cts[ctid].status == "running" and sim.writes() == before  # nothing changed
    sim.pveum('pveum role add AicommonsArchives -privs "Datastore.Allocate"')
    sim.pveum("pveum acl modify /storage/local -user aicommons@pve -role AicommonsArchives")
    result = apply_site(site_file, **kw)  # the site file already says the user left: apply carries it out
    assert result.ok, [(o.step, o.detail) for o in result.errors]
    assert ctid not in sim.cluster.cts and len(_archives(sim, ctid)) == 6
