"""The Proxmox VE simulator itself (tests/pvesim), driven with real proxmoxer over real HTTPS and a
real paramiko SSH client. Simulated: the whole Proxmox cluster (no containers run anywhere)."""

from __future__ import annotations

import time

import paramiko
import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from tests.pvesim import Simulator
from tests.pvesim.schema import ApiSchema


@pytest.fixture(scope="module")
def sim():
    with Simulator(task_seconds={"vzclone": 1.0}) as s:
        s.add_template("pve1", 9000)
        yield s


@pytest.fixture(scope="module")
def api(sim):
    user, name = sim.token_id.split("!")
    return ProxmoxAPI(f"127.0.0.1:{sim.api.port}", user=user, token_name=name, token_value=sim.token_secret,
                      verify_ssl=sim.ca_file)


def wait(api, node, upid):
    for _ in range(200):
        st = api.nodes(node).tasks(upid).status.get()
        if st["status"] == "stopped":
            return st
        time.sleep(0.05)
    raise AssertionError("task did not stop")


def test_schema_rejects_unknown_and_malformed_parameters(api):
    with pytest.raises(ResourceException) as e:
        api.nodes("pve1").lxc(9000).clone.post(newid=42, colour="blue")
    assert e.value.status_code == 400
    assert set(e.value.errors) == {"newid", "colour"}
    assert "minimum" in e.value.errors["newid"]
    with pytest.raises(ResourceException) as e:
        api.nodes("pve1").lxc.post(vmid=300, ostemplate="local:vztmpl/x.tar.zst", net0="name=eth0,bridg=vmbr0")
    assert "bridg" in e.value.errors["net0"]


def test_unknown_path_and_unmodelled_path(api):
    with pytest.raises(ResourceException) as e:
        api.nodes("pve1").teapot.get()
    assert e.value.status_code == 501
    with pytest.raises(ResourceException) as e:
        api.cluster.ha.status.get()
    assert e.value.status_code == 501 and "not modelled" in e.value.content


def test_bad_token_is_refused(sim):
    bad = ProxmoxAPI(f"127.0.0.1:{sim.api.port}", user="aicommons@pve", token_name="apply", token_value="wrong",
                     verify_ssl=sim.ca_file)
    with pytest.raises(ResourceException) as e:
        bad.version.get()
    assert e.value.status_code == 401


def test_clone_locks_source_and_task_has_upid(api):
    upid = api.nodes("pve1").lxc(9000).clone.post(newid=500, hostname="a")
    assert upid.startswith("UPID:pve1:") and ":vzclone:9000:" in upid
    with pytest.raises(ResourceException) as e:
        api.nodes("pve1").lxc(9000).clone.post(newid=501, hostname="b")
    assert e.value.status_code == 500 and "CT is locked (disk)" in e.value.content
    assert api.nodes("pve1").lxc(500).config.get()["lock"] == "create"
    st = wait(api, "pve1", upid)
    assert st["exitstatus"] == "OK"
    cfg = api.nodes("pve1").lxc(500).config.get()
    assert "lock" not in cfg and "base-9000-disk-0/vm-500-disk-0" in cfg["rootfs"]
    log = api.nodes("pve1").tasks(upid).log.get()
    assert log[-1]["t"] == "TASK OK"


def test_token_cannot_set_root_only_settings(api, sim):
    with pytest.raises(ResourceException) as e:
        api.nodes("pve1").lxc.post(vmid=510, ostemplate="local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst",
                                   features="nesting=1,keyctl=1")
    assert e.value.status_code == 403
    with pytest.raises(ResourceException) as e:
        api.nodes("pve1").lxc(9000).config.put(dev0="/dev/nvidia0")
    assert e.value.status_code == 403
    # nesting alone is allowed to a token
    upid = api.nodes("pve1").lxc.post(vmid=511, ostemplate="local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst",
                                      features="nesting=1")
    assert wait(api, "pve1", upid)["exitstatus"] == "OK"


def test_root_ticket_may_set_root_only_settings(sim):
    root = ProxmoxAPI(f"127.0.0.1:{sim.api.port}", user="root@pam", password=sim.root_password, verify_ssl=sim.ca_file)
    root.nodes("pve1").lxc(9000).config.put(dev0="/dev/nvidia0")
    assert root.nodes("pve1").lxc(9000).config.get()["dev0"] == "/dev/nvidia0"


def test_injected_http_fault_and_config_digest(api, sim):
    sim.fail_http(r"/lxc/500/config$", method="PUT", message="got timeout")
    with pytest.raises(ResourceException) as e:
        api.nodes("pve1").lxc(500).config.put(memory=1024)
    assert e.value.status_code == 500 and "got timeout" in e.value.content
    digest = api.nodes("pve1").lxc(500).config.get()["digest"]
    api.nodes("pve1").lxc(500).config.put(memory=1024, digest=digest)
    with pytest.raises(ResourceException) as e:
        api.nodes("pve1").lxc(500).config.put(memory=2048, digest=digest)
    assert "modified" in e.value.content


def test_ssh_side_checks_host_keys_and_answers_pct(sim, api):
    host, port = sim.ssh_address("pve1")
    stranger = paramiko.SSHClient()
    stranger.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        stranger.connect(host, port=port, username="root", key_filename=str(sim.key_file), look_for_keys=False)
    c = paramiko.SSHClient()
    c.load_host_keys(str(sim.known_hosts))
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(host, port=port, username="root", key_filename=str(sim.key_file), look_for_keys=False, allow_agent=False)
    wait(api, "pve1", api.nodes("pve1").lxc(500).status.start.post())
    stdin, stdout, _ = c.exec_command("pct push 500 /dev/stdin /etc/motd --perms 0600")
    stdin.write(b"hello")
    stdin.channel.shutdown_write()
    assert stdout.channel.recv_exit_status() == 0
    _, stdout, _ = c.exec_command("pct exec 500 -- cat /etc/motd")
    assert stdout.read() == b"hello"
    _, stdout, _ = c.exec_command("pct exec 9999 -- true")
    assert stdout.channel.recv_exit_status() == 2
    assert [r.ctid for r in sim.records[-3:]] == [500, 500, 9999]
    c.close()


def test_schema_covers_every_modelled_handler():
    from tests.pvesim.handlers import HANDLERS

    schema = ApiSchema.load()
    for method, path in HANDLERS:
        concrete = path.replace("{node}", "pve1").replace("{vmid}", "100").replace("{upid}", "U")
        concrete = concrete.replace("{group}", "g").replace("{pos}", "0").replace("{name}", "n").replace("{cidr}", "c")
        found = schema.endpoint(method, concrete)
        assert found is not None and found[0].path == path, (method, path)


def test_raw_lxc_keys_cannot_travel_over_the_api(api):
    with pytest.raises(ResourceException) as e:
        api.nodes("pve1").lxc(9000).config.put(**{"lxc.cgroup2.devices.allow": "c 195:* rwm"})
    assert e.value.status_code == 400 and "lxc.cgroup2.devices.allow" in e.value.errors


def test_vzdump_is_a_task_whose_archive_is_listed_and_outlives_the_ct(api):
    upid = api.nodes("pve1").lxc.post(vmid=520, ostemplate="local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst",
                                      hostname="arch", rootfs="local-lvm:4")
    assert wait(api, "pve1", upid)["exitstatus"] == "OK"
    with pytest.raises(ResourceException) as e:  # schema-checked like every call
        api.nodes("pve1").vzdump.post(vmid="520", storage="local", compress="brotli")
    assert e.value.status_code == 400 and "compress" in e.value.errors
    bad = api.nodes("pve1").vzdump.post(vmid="520", storage="local-lvm", mode="stop", compress="zstd")
    st = wait(api, "pve1", bad)
    assert "does not support backups" in st["exitstatus"]
    upid = api.nodes("pve1").vzdump.post(vmid="520", storage="local", mode="stop", compress="zstd", protected=1)
    assert ":vzdump:520:" in upid and wait(api, "pve1", upid)["exitstatus"] == "OK"
    assert any("creating vzdump archive" in x["t"] for x in api.nodes("pve1").tasks(upid).log.get())
    listed = api.nodes("pve1").storage("local").content.get(content="backup", vmid=520)
    assert [(v["vmid"], v["protected"]) for v in listed] == [(520, 1)]
    assert listed[0]["volid"].startswith("local:backup/vzdump-lxc-520-") and listed[0]["format"] == "tar.zst"
    assert api.nodes("pve1").storage("local").content.get(content="backup", vmid=521) == []
    assert wait(api, "pve1", api.nodes("pve1").lxc(520).delete())["exitstatus"] == "OK"
    assert api.nodes("pve1").storage("local").content.get(content="backup", vmid=520) == listed


# ---- behaviour the driver relies on, as upstream has it (each traced in pvesim's comments) ----

def _api(sim):
    user, name = sim.token_id.split("!")
    return ProxmoxAPI(f"127.0.0.1:{sim.api.port}", user=user, token_name=name, token_value=sim.token_secret,
                      verify_ssl=sim.ca_file)


def test_created_rules_go_to_the_top_whatever_pos_says_and_moveto_moves(api, sim):
    rules = api.nodes("pve1").lxc(500).firewall.rules
    for i in range(3):
        rules.post(type="in", action="ACCEPT", dport=str(1000 + i), enable=1, pos=i)
    rules.post(type="in", action="DROP", dport="9")  # no `enable`: created disabled
    got = rules.get()
    assert [(r["dport"], r["enable"]) for r in got] == [("9", 0), ("1002", 1), ("1001", 1), ("1000", 1)]
    api.nodes("pve1").lxc(500).firewall.rules(0).put(moveto=3)  # lands before the rule that was at 3
    assert [r["dport"] for r in rules.get()] == ["1002", "1001", "9", "1000"]
    api.nodes("pve1").lxc(500).firewall.rules(2).put(moveto=9)  # past the end: appended
    assert [r["dport"] for r in rules.get()] == ["1002", "1001", "1000", "9"]
    api.nodes("pve1").lxc(500).firewall.rules(3).put(dport="10", enable=1)
    assert rules.get()[3]["dport"] == "10" and rules.get()[3]["enable"] == 1


def test_a_dport_list_of_more_than_15_numbers_is_refused_as_pve_does(api):
    """pve-firewall parse_port_name_number_or_range: numbers count 1, ranges 2, > 15 dies."""
    rules = api.nodes("pve1").lxc(500).firewall.rules
    rules.post(type="in", action="ACCEPT", dport=",".join(str(1000 + i) for i in range(15)), enable=1)
    with pytest.raises(ResourceException) as e:
        rules.post(type="in", action="ACCEPT", dport=",".join(str(1000 + i) for i in range(16)), enable=1)
    assert "too many entries in port list" in str(e.value)
    with pytest.raises(ResourceException):
        rules.post(type="in", action="ACCEPT", dport="1:2," + ",".join(str(1000 + i) for i in range(14)), enable=1)


def test_ipset_entries_are_normalised_on_read_back(api):
    api.cluster.firewall.ipset.post(name="norm")
    api.cluster.firewall.ipset("norm").post(cidr="10.0.5.7/24")
    api.cluster.firewall.ipset("norm").post(cidr="192.168.1.10/32")
    assert sorted(e["cidr"] for e in api.cluster.firewall.ipset("norm").get()) == ["10.0.5.0/24", "192.168.1.10"]
    with pytest.raises(ResourceException) as e:
        api.cluster.firewall.ipset("norm").post(cidr="192.168.1.10")
    assert e.value.status_code == 400 and "already exists" in e.value.errors["cidr"]


def test_task_with_warnings_ends_warnings_n_and_did_its_work(api, sim):
    sim.warn_next_task("vzstart", "systemd-networkd: could not set MTU")
    upid = api.nodes("pve1").lxc(500).status.start.post() if sim.cluster.cts[500].status != "running" else None
    if upid is None:
        wait(api, "pve1", api.nodes("pve1").lxc(500).status.stop.post())
        upid = api.nodes("pve1").lxc(500).status.start.post()
    st = wait(api, "pve1", upid)
    assert st["exitstatus"] == "WARNINGS: 1" and sim.cluster.cts[500].status == "running"
    lines = [x["t"] for x in api.nodes("pve1").tasks(upid).log.get()]
    assert "WARN: systemd-networkd: could not set MTU" in lines and lines[-1] == "TASK WARNINGS: 1"


def test_next_id_follows_the_datacenter_range(api, sim):
    sim.cluster.datacenter["next-id"] = "lower=7000,upper=7002"
    try:
        assert api.cluster.nextid.get() == "7000"
        assert api.cluster.options.get()["next-id"] == {"lower": 7000, "upper": 7002}  # decoded, as PVE does
        with pytest.raises(ResourceException) as e:
            api.cluster.nextid.get(vmid=9000)
        assert e.value.status_code == 400
    finally:
        sim.cluster.datacenter.clear()


def test_a_stopped_task_releases_the_clone_lock_and_leaves_no_half_clone():
    with Simulator(nodes=1) as sim:
        sim.add_template("pve1", 9000)
        api = _api(sim)
        sim.hang_next_task("vzclone")
        upid = api.nodes("pve1").lxc(9000).clone.post(newid=600, hostname="x")
        assert sim.cluster.cts[9000].lock == "disk" and sim.cluster.cts[600].lock == "create"
        api.nodes("pve1").tasks(upid).delete()
        st = api.nodes("pve1").tasks(upid).status.get()
        assert st["status"] == "stopped" and st["exitstatus"] == "interrupted by signal"
        assert sim.cluster.cts[9000].lock is None and 600 not in sim.cluster.cts


def test_linked_clones_only_where_the_storage_type_allows_them():
    from tests.pvesim.state import Storage

    for store, ok in ((Storage("nfs-ct", "nfs", "rootdir,images", shared=True), False),
                      (Storage("dir-ct", "dir", "rootdir,images"), False),
                      (Storage("zfs-ct", "zfspool", "rootdir,images"), True),
                      (Storage("ceph-ct", "rbd", "rootdir,images", shared=True), True)):
        with Simulator(nodes=1, storage=store) as sim:
            sim.add_template("pve1", 9000)
            api = _api(sim)
            if ok:
                assert wait(api, "pve1", api.nodes("pve1").lxc(9000).clone.post(newid=601))["exitstatus"] == "OK"
                continue
            with pytest.raises(ResourceException) as e:
                api.nodes("pve1").lxc(9000).clone.post(newid=601)
            assert "Linked clone feature" in e.value.content and "not available" in e.value.content
            assert 601 not in sim.cluster.cts and sim.cluster.cts[9000].lock is None
            types = {r["storage"]: r["plugintype"] for r in api.cluster.resources.get(type="storage")}
            assert types[store.id] == store.plugintype


ROLE = "VM.Allocate VM.Clone VM.Audit VM.PowerMgmt VM.Config.Network VM.Config.Options VM.Config.Memory " \
       "VM.Config.CPU VM.Config.Disk Pool.Audit"


def _limited(**kw) -> Simulator:
    sim = Simulator(nodes=2, acl=None, **kw).__enter__()
    sim.add_template("pve1", 9000)
    for line in (f'role add Compute -privs "{ROLE}"', 'role add Store -privs "Datastore.AllocateSpace Datastore.Audit"',
                 'role add Net -privs "SDN.Use"', 'role add Audit -privs "Sys.Audit"',
                 "acl modify /pool/aicommons -user aicommons@pve -role Compute",
                 "acl modify /storage -user aicommons@pve -role Store",
                 "acl modify /sdn/zones/localnetwork -user aicommons@pve -role Net",
                 "user token add aicommons@pve apply --privsep 0"):
        sim.pveum(line)
    return sim


def test_node_sizes_need_sys_audit_on_the_node_path_not_on_slash_alone():
    sim = _limited()
    try:
        api = _api(sim)
        sim.pveum("acl modify / -user aicommons@pve -role Audit -propagate 0")
        nodes = api.cluster.resources.get(type="node")
        assert [sorted(n) for n in nodes] == [["id", "node", "status", "type"]] * 2  # no maxmem, no maxcpu
        assert api.cluster.status.get()  # Sys.Audit on / itself is enough for this one
        sim.pveum("acl modify /nodes -user aicommons@pve -role Audit")
        assert all(n["maxmem"] > 0 and n["maxcpu"] > 0 for n in api.cluster.resources.get(type="node"))
        # guests outside the token's pool are invisible
        sim.add_template("pve2", 9001, pool=None)
        assert {r["vmid"] for r in api.cluster.resources.get(type="vm")} == {9000}
    finally:
        sim.close()


def test_tags_at_create_are_checked_on_the_vm_path_before_it_joins_the_pool():
    sim = _limited()
    try:
        api = _api(sim)
        params = dict(vmid=700, ostemplate="local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst", pool="aicommons",
                      rootfs="local-lvm:4", hostname="t", unprivileged=1, features="nesting=1", memory=512,
                      net0="name=eth0,bridge=vmbr0,ip=10.0.5.9/24,firewall=1")
        with pytest.raises(ResourceException) as e:
            api.nodes("pve1").lxc.post(tags="aicommons;shared", **params)
        assert e.value.status_code == 403 and "/vms/700" in e.value.content and "VM.Config.Options" in e.value.content
        assert 700 not in sim.cluster.cts
        assert wait(api, "pve1", api.nodes("pve1").lxc.post(**params))["exitstatus"] == "OK"
        api.nodes("pve1").lxc(700).config.put(tags="aicommons;shared")  # in the pool now: allowed
        assert sim.cluster.cts[700].conf["tags"] == "aicommons;shared"
        with pytest.raises(ResourceException) as e:  # and a token may still not set root-only features
            api.nodes("pve1").lxc(700).config.put(features="nesting=1,keyctl=1")
        assert e.value.status_code == 403
    finally:
        sim.close()


def test_clone_needs_the_template_in_the_pool_and_privsep_tokens_get_the_intersection():
    sim = _limited()
    try:
        api = _api(sim)
        sim.cluster.cts[9000].pool = None  # a template outside the pool: VM.Clone is not granted on it
        with pytest.raises(ResourceException) as e:
            api.nodes("pve1").lxc(9000).clone.post(newid=701, pool="aicommons")
        assert e.value.status_code == 403
        sim.cluster.cts[9000].pool = "aicommons"
        assert wait(api, "pve1", api.nodes("pve1").lxc(9000).clone.post(newid=701, pool="aicommons"))["exitstatus"] == "OK"
        # privilege separation: the token's own ACL, intersected with the user's
        sim.pveum("user token add aicommons@pve apply --privsep 1")
        with pytest.raises(ResourceException):
            api.nodes("pve1").lxc(701).status.current.get()  # no token ACL: nothing
        sim.pveum('role add ReadOnly -privs "VM.Audit Sys.Modify"')
        sim.pveum("acl modify /pool/aicommons -token aicommons@pve!apply -role ReadOnly")
        assert api.nodes("pve1").lxc(701).status.current.get()["status"] == "stopped"
        with pytest.raises(ResourceException):
            api.nodes("pve1").lxc(701).status.start.post()  # the user may, the token may not
        perms = api.access.permissions.get(path="/vms/701")["/vms/701"]
        assert set(perms) == {"VM.Audit"}  # Sys.Modify: the token's role has it, the user has not
    finally:
        sim.close()


def test_ping_from_the_node_is_dropped_by_a_policy_in_drop_firewall(api, sim):
    c = paramiko.SSHClient()
    c.load_host_keys(str(sim.known_hosts))
    host, port = sim.ssh_address("pve1")
    c.connect(host, port=port, username="root", key_filename=str(sim.key_file), look_for_keys=False, allow_agent=False)
    ct = sim.cluster.cts[500]
    if ct.status != "running":
        wait(api, "pve1", api.nodes("pve1").lxc(500).status.start.post())
    api.nodes("pve1").lxc(500).config.put(net0="name=eth0,bridge=vmbr0,ip=10.0.5.50/24,firewall=1")

    def ping():
        _, out, _ = c.exec_command("ping -c 1 -W 1 10.0.5.50")
        return out.channel.recv_exit_status()

    assert ping() == 0
    api.nodes("pve1").lxc(500).firewall.options.put(enable=1, policy_in="DROP")
    assert ping() == 0  # the datacenter firewall is still off
    api.cluster.firewall.options.put(enable=1)
    try:
        assert ping() == 1
    finally:
        api.cluster.firewall.options.put(enable=0)
        c.close()


def _documented(**kw) -> Simulator:
    """A simulator whose token holds exactly docs/proxmox.md's ACL (the pveum lines run as written)."""
    from tests.test_proxmox_driver import documented_acl

    sim = Simulator(nodes=2, acl=None, **kw).__enter__()
    sim.add_template("pve1", 9000)
    for line in documented_acl():
        sim.pveum(line)
    return sim


def test_the_documented_token_cannot_create_privileged_containers_or_touch_the_datacenter_firewall():
    sim = _documented()
    try:
        api = _api(sim)
        params = dict(vmid=700, ostemplate="local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst", pool="aicommons",
                      rootfs="local-lvm:4", hostname="t", features="nesting=1", memory=512,
                      net0="name=eth0,bridge=vmbr0,ip=10.0.5.9/24,firewall=1")
        # pve-container create_vm: a privileged container needs Sys.Modify on / itself
        with pytest.raises(ResourceException) as e:
            api.nodes("pve1").lxc.post(unprivileged=0, **params)
        assert e.value.status_code == 403 and "(/, Sys.Modify)" in e.value.content
        assert 700 not in sim.cluster.cts
        # pve-firewall rules_modify_permissions: every datacenter object needs Sys.Modify on /
        for call in (lambda: api.cluster.firewall.options.put(enable=0),
                     lambda: api.cluster.firewall.ipset.post(name="aic-users"),
                     lambda: api.cluster.firewall.groups.post(group="aic-user")):
            with pytest.raises(ResourceException) as e:
                call()
            assert e.value.status_code == 403
        assert api.cluster.firewall.options.get() is not None  # reading is Sys.Audit: allowed
        # an unprivileged container (the default when `unprivileged` is not given) is allowed, and so are
        # its own ipsets and rules (VM.Config.Network on /vms/700, through the pool)
        assert wait(api, "pve1", api.nodes("pve1").lxc.post(**params))["exitstatus"] == "OK"
        assert sim.cluster.cts[700].conf["unprivileged"] == "1"
        fw = api.nodes("pve1").lxc(700).firewall
        fw.ipset.post(name="aic-proxy")
        fw.ipset("aic-proxy").post(cidr="10.0.4.10")
        fw.rules.post(type="in", action="ACCEPT", source="+guest/aic-proxy", proto="tcp", dport="8080", enable=1)
        assert fw.rules.get()[0]["source"] == "+guest/aic-proxy"
    finally:
        sim.close()


def test_a_rule_naming_an_ipset_that_does_not_exist_is_refused():
    """pve-firewall verify_rule: `no such ipset` unless the guest or the datacenter has one of that name
    (verify_rule ignores the scope; only compiling the rules does not, `ipt_gen_src_or_dst_match`)."""
    with Simulator(nodes=1) as sim:
        sim.add_template("pve1", 9000)
        api = _api(sim)
        fw = api.nodes("pve1").lxc(9000).firewall
        with pytest.raises(ResourceException) as e:
            fw.rules.post(type="in", action="ACCEPT", source="+guest/aic-users", enable=1)
        assert e.value.status_code == 400 and "no such ipset 'aic-users'" in str(e.value)
        fw.ipset.post(name="aic-users")
        fw.rules.post(type="in", action="ACCEPT", source="+guest/aic-users", enable=1)
        with pytest.raises(ResourceException) as e:
            fw.rules.post(type="in", action="ACCEPT", source="+dc/aic-other", enable=1)
        assert "no such ipset 'aic-other'" in str(e.value)
        assert [r["source"] for r in fw.rules.get()] == ["+guest/aic-users"]
