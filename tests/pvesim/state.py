"""The simulated cluster's state: nodes, storages, containers, tasks, locks, pools, firewall, backups.

All methods are called with `Cluster.lock` held by the HTTP/SSH front ends; task workers take
it themselves. Errors raise `PveError(status, message, errors)` which the server turns into
PVE's reply (HTTP reason phrase = message, body {"data": null, "errors": ...}).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
import time
from dataclasses import dataclass, field

GiB = 1024**3
MiB = 1024**2


class PveError(Exception):
    def __init__(self, status: int, message: str, errors: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


@dataclass
class Node:
    name: str
    maxmem: int  # bytes
    maxcpu: int
    gpu: bool = False
    ip: str = "127.0.0.1"
    disk_free_gb: int = 100_000  # local-lvm thin pool free space


@dataclass
class Ct:
    vmid: int
    node: str
    conf: dict[str, str]
    status: str = "stopped"
    pool: str | None = None
    fs: dict[str, bytes] = field(default_factory=dict)  # files pushed into the CT
    load: float = 0.0  # CPU use as pvestatd reports it: a fraction of the CT's cores (a test sets it)

    @property
    def template(self) -> bool:
        return self.conf.get("template") in ("1", "true")

    @property
    def lock(self) -> str | None:
        return self.conf.get("lock")

    def digest(self) -> str:
        text = "\n".join(f"{k}: {v}" for k, v in sorted(self.conf.items()) if k != "lock")
        return hashlib.sha1(text.encode()).hexdigest()

    def mem_bytes(self) -> int:
        return int(self.conf.get("memory", "512")) * MiB

    def ip(self) -> str | None:
        m = re.search(r"(?:^|,)ip=([\d.]+)/", self.conf.get("net0", ""))
        return m.group(1) if m else None

    def disk_gb(self) -> int:
        m = re.search(r"size=(\d+)G", self.conf.get("rootfs", ""))
        return int(m.group(1)) if m else 0


@dataclass
class Task:
    upid: str
    node: str
    type: str
    id: str
    user: str
    starttime: int
    pid: int
    pstart: int
    status: str = "running"
    exitstatus: str | None = None
    log: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    undo: object = None


@dataclass(frozen=True)
class Storage:
    """One storage.cfg entry, present on every node. `plugintype` decides its features (below)."""

    id: str
    plugintype: str  # lvmthin, zfspool, rbd, btrfs, dir, nfs, cifs, lvm, cephfs, ...
    content: str  # rootdir,images / vztmpl,iso,backup / ...
    shared: bool = False
    max_protected: int | None = None  # storage.cfg `max-protected-backups`


# Which storage types can make a *linked* clone of a container template's volume.
# pve-container src/PVE/API2/LXC.pm `clone_vm` asks pve-storage `volume_has_feature('clone', ...,
# {valid_target_formats => ['raw', 'subvol']})`; pve-storage src/PVE/Storage/Plugin.pm
# `volume_has_feature` (the base class of dir, nfs, cifs, cephfs, glusterfs) returns 0 for that
# because its clone_image makes a qcow2, which a container cannot use; LVMPlugin.pm has no clone
# feature at all; LvmThinPlugin.pm, ZFSPoolPlugin.pm, RBDPlugin.pm (`clone => {base => 1}`) and
# BTRFSPlugin.pm (`clone => {base => {subvol => 1, raw => 1, ...}}`) allow it.
LINKED_CLONE_TYPES = frozenset({"lvmthin", "zfspool", "rbd", "btrfs"})


@dataclass
class Fault:
    """An injected failure. kind: http (fail matching requests), task_hang, task_warn, node_full."""

    kind: str
    method: str | None = None
    path: re.Pattern | None = None
    status: int = 500
    message: str = "Internal Server Error"
    times: int = 1
    node: str | None = None
    task_type: str | None = None


class Cluster:
    def __init__(self, nodes: list[Node], storage: Storage | None = None,
                 task_seconds: dict[str, float] | None = None):
        from tests.pvesim.access import Access

        self.lock = threading.RLock()
        ct_store = storage or Storage("local-lvm", "lvmthin", "rootdir,images")
        self.storages = {ct_store.id: ct_store, "local": Storage("local", "dir", "vztmpl,iso,backup")}
        self.storage = ct_store.id  # the container storage
        self.shared = ct_store.shared  # shared (Ceph RBD, NFS): clones may target other nodes
        self.nodes = {n.name: n for n in nodes}
        self.access = Access()
        self.datacenter: dict[str, str] = {}  # datacenter.cfg, e.g. {"next-id": "lower=1000,upper=2000"}
        self.cts: dict[int, Ct] = {}
        # QEMU VMs of other teams (not modelled beyond what /cluster/resources shows of them)
        self.vms: dict[int, dict] = {}  # vmid -> {node, name, maxmem (bytes), maxcpu, status, pool}
        self.tasks: dict[str, Task] = {}
        self.pools: dict[str, dict] = {}
        self.fw_groups: dict[str, list[dict]] = {}
        self.fw_ipsets: dict[tuple, list[dict]] = {}  # (scope, name) -> entries; scope "cluster" or vmid
        self.fw_rules: dict[int, list[dict]] = {}
        self.fw_options: dict[str, dict[str, str]] = {}  # "cluster" or str(vmid)
        self.pci_mappings: list[dict] = []
        self.volumes: dict[tuple[str, str], dict[str, dict]] = {}  # (node, storage) -> volid -> backup entry
        self.task_seconds = dict(task_seconds or {})
        self.faults: list[Fault] = []
        self.hung: list[Task] = []
        self._pid = itertools.count(0x1000)
        # OS templates per node: on a storage that is not shared (`local`) each node has its own files,
        # as `pveam download <node> local ...` puts them (pve-storage: volumes of a non-shared storage
        # exist only on the node that holds them).
        self.templates_on_disk: dict[str, set[str]] = {
            n.name: {"local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"} for n in nodes}
        for n in nodes:
            if n.gpu:
                self.pci_mappings.append({"id": f"gpu-{n.name}", "map": [f"node={n.name},path=0000:01:00.0,id=10de:2204"]})

    # ---- helpers ------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        if name not in self.nodes:
            raise PveError(500, f"no such cluster node '{name}'")
        return self.nodes[name]

    def ct(self, node: str, vmid: int) -> Ct:
        ct = self.cts.get(int(vmid))
        if ct is None or ct.node != node:
            raise PveError(500, f"Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist")
        return ct

    def check_lock(self, ct: Ct) -> None:
        if ct.lock:
            raise PveError(500, f"CT is locked ({ct.lock})")

    def pool_of(self, vmid: int) -> str | None:
        ct = self.cts.get(int(vmid))
        return ct.pool if ct is not None else None

    def storage_of(self, volid_or_id: str) -> Storage:
        sid = volid_or_id.split(":", 1)[0]
        if sid not in self.storages:
            raise PveError(500, f"storage '{sid}' does not exist")
        return self.storages[sid]

    def committed(self, node: str) -> tuple[int, int]:
        """Memory and cores promised to every guest on `node`: containers and QEMU VMs alike."""
        cts = [c for c in self.cts.values() if c.node == node and not c.template]
        vms = [v for v in self.vms.values() if v["node"] == node]
        mem = sum(c.mem_bytes() for c in cts) + sum(v["maxmem"] for v in vms)
        cores = sum(int(c.conf.get("cores", "1")) for c in cts) + sum(v["maxcpu"] for v in vms)
        return mem, cores

    def mem_in_use(self, node: str) -> int:
        """The node's `mem` (bytes in use now): the host's own 2 GiB, a quarter of each running
        container's memory and half of each running VM's (a VM's RAM is allocated as the guest touches it)."""
        cts = sum(c.mem_bytes() // 4 for c in self.cts.values() if c.node == node and c.status == "running")
        vms = sum(v["maxmem"] // 2 for v in self.vms.values() if v["node"] == node and v["status"] == "running")
        return 2 * GiB + cts + vms

    # ---- tasks --------------------------------------------------------------------------
    def start_task(self, node: str, ttype: str, tid: str, user: str, work, seconds: float | None = None) -> str:
        """Run `work(task)` after the task's simulated duration; it may raise PveError to fail."""
        now = int(time.time())
        pid = next(self._pid)
        upid = f"UPID:{node}:{pid:08X}:{pid * 7:08X}:{now:08X}:{ttype}:{tid}:{user}:"
        task = Task(upid, node, ttype, tid, user, now, pid, pid * 7)
        self.tasks[upid] = task
        hang = self._take_fault("task_hang", task_type=ttype)
        warn = self._take_fault("task_warn", task_type=ttype)
        delay = self.task_seconds.get(ttype, self.task_seconds.get("*", 0.0)) if seconds is None else seconds

        def run():
            if hang:
                self.hung.append(task)
                task.log.append("waiting for storage (simulated hang)")
                task.done.wait()
                task.done.clear()
            elif delay:
                time.sleep(delay)
            with self.lock:
                if task.status == "stopped":  # stopped by DELETE /nodes/{node}/tasks/{upid}
                    task.done.set()
                    return
                # pve-common src/PVE/RESTEnvironment.pm `fork_worker`: a worker that warned ends
                # "TASK WARNINGS: N" and its exit status is "WARNINGS: N"; src/PVE/UPID.pm
                # `status_is_error` counts only statuses other than OK and WARNINGS: N as failures.
                try:
                    if warn:
                        task.log.append(f"WARN: {warn.message}")
                    work(task)
                    warned = sum(1 for line in task.log if line.startswith("WARN: "))
                    task.exitstatus = f"WARNINGS: {warned}" if warned else "OK"
                    task.log.append(f"TASK {task.exitstatus}")
                except PveError as exc:
                    task.exitstatus = exc.message
                    task.log.append(f"TASK ERROR: {exc.message}")
                task.status = "stopped"
            task.done.set()

        threading.Thread(target=run, daemon=True, name=f"pvesim-{ttype}-{tid}").start()
        return upid

    def release_hung(self) -> int:
        hung, self.hung = self.hung, []
        for t in hung:
            t.done.set()
        return len(hung)

    # ---- faults -------------------------------------------------------------------------
    def _take_fault(self, kind: str, **match) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.kind != kind or f.times <= 0:
                    continue
                if any(getattr(f, k) not in (None, v) for k, v in match.items()):
                    continue
                f.times -= 1
                return f
        return None

    def http_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.kind == "http" and f.times > 0 and (f.method in (None, method)) and (f.path is None or f.path.search(path)):
                    f.times -= 1
                    return f
        return None

    def node_full(self, node: str) -> bool:
        return any(f.kind == "node_full" and f.node == node and f.times > 0 for f in self.faults)

    # ---- resources ----------------------------------------------------------------------
    def resources(self, rtype: str | None, can=lambda path, priv: True) -> list[dict]:
        """GET /cluster/resources as `can(path, priv)` may see it (pve-manager PVE/API2/Cluster.pm
        `resources`): guests need VM.Audit on /vms/<id> (pool ACLs count), storages Datastore.Audit
        on /storage/<id>; nodes are always listed, but without Sys.Audit on /nodes/<node>
        (PVE/API2Tools.pm `extract_node_stats` with $removeStats) only id, node, type and status:
        no maxmem, maxcpu, mem, cpu, disk."""
        out: list[dict] = []
        if rtype in (None, "node"):
            for n in self.nodes.values():
                e = {"id": f"node/{n.name}", "type": "node", "node": n.name, "status": "online",
                     "maxmem": n.maxmem, "mem": self.mem_in_use(n.name), "maxcpu": n.maxcpu,
                     "cpu": 0.05, "maxdisk": 100 * GiB, "disk": 10 * GiB, "uptime": 86400, "level": ""}
                if not can(f"/nodes/{n.name}", "Sys.Audit"):
                    e = {k: e[k] for k in ("id", "type", "node", "status")}
                out.append(e)
        if rtype in (None, "vm"):
            for c in sorted(self.cts.values(), key=lambda c: c.vmid):
                if not can(f"/vms/{c.vmid}", "VM.Audit"):
                    continue
                e = {"id": f"lxc/{c.vmid}", "type": "lxc", "vmid": c.vmid, "node": c.node,
                     "name": c.conf.get("hostname", f"CT{c.vmid}"), "status": c.status,
                     "maxmem": c.mem_bytes(), "mem": c.mem_bytes() // 4 if c.status == "running" else 0,
                     "maxcpu": int(c.conf.get("cores", "1")), "cpu": c.load if c.status == "running" else 0.0,
                     "maxdisk": c.disk_gb() * GiB, "disk": 0, "template": 1 if c.template else 0,
                     "uptime": 100 if c.status == "running" else 0}
                if c.conf.get("tags"):
                    e["tags"] = c.conf["tags"]
                if c.pool and can(f"/pool/{c.pool}", "Pool.Audit"):
                    e["pool"] = c.pool
                if c.lock:
                    e["lock"] = c.lock
                out.append(e)
            for vmid, v in sorted(self.vms.items()):
                if not can(f"/vms/{vmid}", "VM.Audit"):
                    continue
                e = {"id": f"qemu/{vmid}", "type": "qemu", "vmid": vmid, "node": v["node"], "name": v["name"],
                     "status": v["status"], "maxmem": v["maxmem"],
                     "mem": v["maxmem"] // 2 if v["status"] == "running" else 0, "maxcpu": v["maxcpu"],
                     "cpu": 0.0, "maxdisk": 32 * GiB, "disk": 0, "template": 0, "uptime": 100}
                if v.get("pool") and can(f"/pool/{v['pool']}", "Pool.Audit"):
                    e["pool"] = v["pool"]
                out.append(e)
        if rtype in (None, "storage"):
            for st in self.storages.values():
                if not can(f"/storage/{st.id}", "Datastore.Audit"):
                    continue
                for n in self.nodes.values():
                    out.append({"id": f"storage/{n.name}/{st.id}", "type": "storage", "storage": st.id,
                                "node": n.name, "status": "available", "content": st.content,
                                "shared": int(st.shared), "maxdisk": 4000 * GiB, "disk": 100 * GiB,
                                "plugintype": st.plugintype})
        return out

    def stats(self) -> dict:
        return {n: self.committed(n) for n in self.nodes}


def token_ok(header: str, tokens: dict[str, str]) -> str | None:
    """`PVEAPIToken=USER@REALM!NAME=SECRET` -> the token id, if it is known and the secret matches."""
    m = re.fullmatch(r"PVEAPIToken=([^=]+)=(.+)", header or "")
    if not m:
        return None
    tid, secret = m.groups()
    return tid if tokens.get(tid) == secret else None


def new_secret() -> str:
    return os.urandom(16).hex()
