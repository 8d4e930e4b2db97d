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
