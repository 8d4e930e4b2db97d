"""ProxmoxDriver: the ComputeDriver for a Proxmox VE cluster (API token + SSH to the nodes).

- User containers, and shared services that run Docker (catalog install.method: compose), are
  linked clones of the node's user template (features nesting=1,keyctl=1 — keyctl is root-only,
  so the template is prepared once by root; see docs/proxmox.md). Other shared services are
  created from the Debian 12 ostemplate with nesting=1, which a token may set.
- On local storage each node that takes clones holds its own template: `template_ctid` on the
  first node, `template_ctid + i` on node i (or any template CT tagged `aicommons-template`).
  On shared storage one template serves all nodes (`clone … target=<node>`). Clones of one
  template run one at a time (PVE locks the source for the clone's duration); clones of
  different templates, and everything else, run in parallel.
- Containers are the site's when tagged `aicommons` and the site's tag; identity is the CTID.
  Tags are set right after create/clone, not with it: PVE checks tags at create on /vms/<id>,
  before the container is in the pool whose ACL the token has (pve-guest-common
  `assert_tag_permissions`). The claim survives a crash in between: create and clone write a
  description marker, and an untagged CT carrying the site's marker is finished, not refused.
- Before the engine changes anything, `check(plan)` runs the preflight (privileges, storage
  types, templates) and places every container the plan creates; a plan that does not fit, or
  that this token cannot carry out, is refused whole.
- Ready = the container reports its planned address (GET …/interfaces); no ICMP, which the
  containers' own firewall (policy_in DROP) drops.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from aicommons.catalog import load_catalog
from aicommons.drivers.base import ContainerState, ExecResult, Usage
from aicommons.drivers.proxmox import ctconfig, preflight, provision
from aicommons.drivers.proxmox.api import ApiError, CtConfig, Guest, PveApi, RetryPolicy, TaskFailed
from aicommons.drivers.proxmox.placement import NodeCapacity, Placement, Want
from aicommons.drivers.proxmox.shell import NodeShell, ParamikoShell, pct_exec, pct_push
from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.model import Container

log = logging.getLogger(__name__)
Probe = Callable[[str, int, str], bool]  # (node, ctid, ip) -> up with that address?
FULL = re.compile(r"insufficient free space|no space left|out of space", re.I)


MAX_PROTECTED = 5  # pve-storage get_max_protected_backups without Datastore.Allocate


class ProxmoxDriver:
    kind = "proxmox"

    def __init__(self, api: PveApi, shell: NodeShell, *, site_name: str, bridge: str = "vmbr0",
                 storage: str = "local-lvm", ostemplate: str, template_ctid: int = 9000,
                 pool: str | None = "aicommons", nodes: list[str] | None = None, pinned: dict[str, str] | None = None,
                 probe: Probe | None = None, reserve_mb: int = 2048, cpu_ratio: float = 1.0, workers: int = 8,
                 docker_services: set[str] | None = None, ready_poll: float = 0.5, backup_storage: str = "local",
                 archive_timeout: float = 1800):
        self.api, self.shell = api, shell
        self.site_tag = ctconfig.site_tag(site_name)
        self.site_name, self.bridge, self.storage, self.ostemplate = site_name, bridge, storage, ostemplate
        self.template_ctid, self.pool, self.allowed_nodes = template_ctid, pool, nodes
        self.pinned = dict(pinned or {})
        self.probe = probe or self._has_address
        self.reserve_mb, self.cpu_ratio, self.workers, self.ready_poll = reserve_mb, cpu_ratio, workers, ready_poll
        self.backup_storage, self.archive_timeout = backup_storage, archive_timeout
        if docker_services is None:
            docker_services = {n for n, s in load_catalog().services.items() if s.install.method == "compose"}
        self.docker_services = docker_services
        self._where: dict[int, str] = {}  # ctid -> node (cache; verified on use)
        self._assigned: dict[int, str] = {}  # ctid -> node chosen but not yet created
        self._assigned_want: dict[int, Want] = {}
        self._lock = threading.Lock()
        self._source_locks: dict[int, threading.Lock] = {}
        self._pool_ok = False
        self.full_nodes: set[str] = set()  # nodes whose storage refused a disk in this run
        self._shared: bool | None = None  # is `storage` shared between nodes?
        self._notes: dict[int, list[str]] = {}  # ctid -> task warnings, for the engine's step report

    @classmethod
    def from_site(cls, site, *, api: PveApi | None = None, shell: NodeShell | None = None,
                  ssh_address: Callable[[str], tuple[str, int]] | None = None, base_dir=None,
                  task_timeout: float = 600, retry: RetryPolicy | None = None, **options) -> ProxmoxDriver:
        from urllib.parse import urlsplit

        from aicommons.spec.secretref import resolve_ref

        d = site.driver
        if api is None:
            url = urlsplit(d.api_url)
            if url.scheme != "https":
                raise PermanentError("driver.api_url: proxmoxer speaks HTTPS only; use https://HOST:8006")
            verify: bool | str = (d.ca_file or True) if d.verify_tls else False
            secret = resolve_ref(d.token_secret, "driver.token_secret", base_dir)
            api = PveApi(url.netloc, d.token_id, secret, verify=verify, task_timeout=task_timeout, retry=retry)
        if shell is None:
            if ssh_address is None:
                ips: dict[str, str] = {}

                def ssh_address(node: str) -> tuple[str, int]:
                    if not ips:
                        ips.update({n.name: n.ip or n.name for n in api.nodes()})
                    return ips.get(node, node), d.ssh.port
            shell = ParamikoShell(ssh_address, d.ssh.user, d.ssh.key_file, d.ssh.known_hosts)
        pinned = dict(d.pinned)
        for u in site.users:
            if u.node:
                pinned[u.name] = u.node
        for name, ov in site.services.items():
            if ov.node:
                pinned[name] = ov.node
        return cls(api, shell, site_name=site.name, bridge=site.network.bridge, storage=d.storage,
                   ostemplate=d.template, template_ctid=d.template_ctid, pool=d.pool, nodes=list(d.nodes),
                   pinned=pinned, backup_storage=d.backup_storage, **options)

    # ---- reading ------------------------------------------------------------------------
    def _ours(self, g: Guest) -> bool:
        return not g.template and "aicommons" in g.tags and self.site_tag in g.tags

    def _state(self, g: Guest, cfg: CtConfig | None) -> ContainerState:
        ip = None
        if cfg is not None:
            ip = (cfg.prop("net0").get("ip") or "").split("/")[0] or None
        status: Literal["running", "stopped"] = "running" if g.status == "running" else "stopped"
        return ContainerState(
            ctid=g.vmid, hostname=(cfg.get("hostname") if cfg else None) or g.name, status=status, ip=ip,
            node=g.node, memory_mb=int(cfg.get("memory") or g.maxmem_mb) if cfg else g.maxmem_mb,
            cores=int(cfg.get("cores") or g.maxcpu) if cfg else g.maxcpu,
            disk_gb=(cfg.rootfs_gb if cfg else None) or g.maxdisk_gb, tags=g.tags,
            digest=cfg.digest if cfg else None)

    def list_containers(self) -> list[ContainerState]:
        mine = [g for g in self.api.guests() if self._ours(g)]
        with self._lock:
            self._where.update({g.vmid: g.node for g in mine})
        with ThreadPoolExecutor(self.workers) as pool:
            cfgs = list(pool.map(lambda g: self.api.config(g.node, g.vmid), mine))
        return [self._state(g, c) for g, c in zip(mine, cfgs, strict=True)]

    def usage(self, ctids: Iterable[int]) -> dict[int, Usage]:
        """This site's running containers' memory and CPU, from one /cluster/resources read."""
        want = set(ctids)
        return {g.vmid: Usage(memory_mb=g.mem_mb, memory_limit_mb=g.maxmem_mb, cpu_percent=round(100 * g.cpu, 1))
                for g in self.api.guests() if g.vmid in want and g.status == "running" and self._ours(g)}

    def _guest(self, ctid: int) -> Guest | None:
        return next((g for g in self.api.guests() if g.vmid == ctid), None)

    def get(self, ctid: int) -> ContainerState | None:
        """This site's container (None for none, a template, or someone else's: `create` says why)."""
        g = self._guest(ctid)
        if g is None or not self._ours(g):
            return None
        with self._lock:
            self._where[ctid] = g.node
        return self._state(g, self.api.config(g.node, ctid))

    def node_of(self, ctid: int) -> str:
        with self._lock:
            node = self._where.get(ctid)
        if node is None:
            g = self._guest(ctid)
            if g is None:
                raise PermanentError(f"container {ctid} does not exist on the cluster")
            node = g.node
            with self._lock:
                self._where[ctid] = node
        return node

    # ---- placement ----------------------------------------------------------------------
    def templates(self, guests: list[Guest] | None = None) -> dict[str, tuple[str, int]]:
        """node -> (node holding the template, its CTID) for every node that can take a linked clone.

        On local storage a node clones only its own template; on shared storage (Ceph, NFS) one
        template serves every node (`clone … target=node`)."""
        found: dict[str, tuple[str, int]] = {}
        for g in sorted(guests if guests is not None else self.api.guests(), key=lambda g: g.vmid):
            if g.template and (ctconfig.TEMPLATE_TAG in g.tags or
                               self.template_ctid <= g.vmid < self.template_ctid + 100):
                found.setdefault(g.node, (g.node, g.vmid))
        if found and self._shared_storage():
            first = found[min(found, key=lambda n: found[n][1])]
            return {n.name: found.get(n.name, first) for n in self.api.nodes()}
        return found

    def _shared_storage(self) -> bool:
        if self._shared is None:
            self._shared = any(s.shared for s in self.api.storages() if s.storage == self.storage)
        return self._shared

    def needs_template(self, c: Container) -> bool:
        return c.role == "user" or c.name in self.docker_services

    def _want(self, c: Container) -> Want:
        pin = c.node or self.pinned.get(c.name) or self.pinned.get(str(c.ctid))
        return Want(c.ctid, c.hostname, c.memory_mb, c.cores, pin, c.gpu, self.needs_template(c))

    def capacities(self) -> dict[str, NodeCapacity]:
        guests = self.api.guests()
        tpl = self.templates(guests)
        gpu_nodes = {n for m in self.api.pci_mappings() for n in m.nodes}
        nodes = [n for n in self.api.nodes() if n.online and n.name not in self.full_nodes
                 and (not self.allowed_nodes or n.name in self.allowed_nodes)]
        blind = [n.name for n in nodes if not n.maxmem_mb or not n.maxcpu]
        if blind:  # PVE omits node sizes from /cluster/resources without Sys.Audit on /nodes/<node>
            raise PermanentError(f"the token cannot read the size of node(s) {', '.join(blind)}: grant Sys.Audit on "
                                 "/nodes (docs/proxmox.md, `pveum acl modify /nodes ...`)")
        caps = {n.name: NodeCapacity(n.name, n.maxmem_mb, n.maxcpu, gpu=n.name in gpu_nodes, has_template=n.name in tpl)
                for n in nodes}
        # Committed memory of every guest the token sees (QEMU VMs too), and never less than what the
        # node reports in use now: guests outside the token's view (other teams' containers and VMs)
        # count through that floor, so a shared cluster is not overcommitted.
        committed = self.api.committed()
        for n in nodes:
            seen = committed.get(n.name)
            caps[n.name].used_mem_mb = max(seen.mem_mb if seen else 0, n.mem_mb)
            caps[n.name].used_cores = seen.cores if seen else 0
        existing = {g.vmid for g in guests}
        with self._lock:
            for ctid, node in list(self._assigned.items()):
                if ctid in existing:
                    continue
                want = self._assigned_want.get(ctid)
                if want and node in caps:
                    caps[node].used_mem_mb += want.mem_mb
                    caps[node].used_cores += want.cores
        return caps

    def place(self, containers: list[Container]) -> dict[int, str]:
        """Choose nodes for every container that does not exist yet; refuse a plan that does not fit."""
        existing = {g.vmid for g in self.api.guests()}
        wants = [self._want(c) for c in containers if c.ctid not in existing and c.ctid not in self._assigned]
        if not wants:
            return {}
        caps = self.capacities()
        got = Placement(caps, self.reserve_mb, self.cpu_ratio).place(wants)
        with self._lock:
            self._assigned.update(got)
            self._assigned_want.update({w.ctid: w for w in wants})
        return got

    # ---- before any change --------------------------------------------------------------
    def preflight(self, containers: list[Container] | None = None) -> preflight.Report:
        """What this token cannot do, and storage that cannot hold the site (reads only)."""
        cs = containers or []
        return preflight.run(self.api, pool=self.pool or "", storage=self.storage, template=self.ostemplate,
                             backup_storage=self.backup_storage, bridge=self.bridge, nodes=self.allowed_nodes,
                             needs_clones=not cs or any(self.needs_template(c) for c in cs),
                             template_ctid=self.template_ctid, planned_ctids=[c.ctid for c in cs])

    def check(self, plan, *, purge: bool = False) -> None:
        """The engine's hook before any change (drivers/base.py): refuse a plan this token cannot
        carry out, then place every container it creates - the whole plan fits, or nothing starts."""
        made = [s.payload for s in plan.steps.values()
                if s.kind == "container" and s.action in ("create", "replace")]
        gone = [] if purge else [s.payload.ctid for s in plan.steps.values()
                                 if s.kind == "container" and s.action == "delete"]
        archive_problems = self._archive_room(gone)
        if not made and not any(s.kind == "firewall" for s in plan.steps.values()) and not archive_problems:
            return
        rep = self.preflight(made or list(getattr(plan.resolved, "containers", []))) if (made or not gone) \
            else preflight.Report()
        rep.problems += archive_problems
        if rep.problems:
            raise PermanentError("the Proxmox cluster cannot carry out this plan; nothing was changed:\n  - "
                                 + "\n  - ".join(rep.problems)
                                 + "\n  (docs/proxmox.md lists the ACL and storage the site needs; "
                                 "`aicommons proxmox check` reports the same)")
        self.place([c for c in made if c.ctid not in self._assigned])

    def take_notes(self, ctid: int) -> list[str]:
        """Warnings of the tasks run for this container since last asked (engine: shown with the step)."""
        with self._lock:
            return self._notes.pop(ctid, [])

    def _note(self, ctid: int, warning: str | None) -> None:
        if warning:
            with self._lock:
                self._notes.setdefault(ctid, []).append(warning)

    # ---- lifecycle ----------------------------------------------------------------------
    def _marker(self) -> str:
        return f"aicommons site {self.site_tag}"

    def _ensure_pool(self) -> None:
        if self.pool and not self._pool_ok:
            with self._lock:
                if self.pool not in self.api.pools():
                    try:
                        self.api.create_pool(self.pool)
                    except ApiError as exc:
                        if "already exists" not in str(exc):
                            raise
                self._pool_ok = True

    def _claim(self, g: Guest) -> None:
        """Refuse to touch a CT that is neither this site's nor one it began making (a clone still
        tagged as the template, or an untagged CT with this site's description marker)."""
        if not g.template and not self._ours(g):
            if ctconfig.TEMPLATE_TAG in g.tags:
                return  # cloned from the template, not configured yet
            if not g.tags and (self.api.config(g.node, g.vmid).get("description") or "").strip() == self._marker():
                return  # created by this site, stopped before its tags were set
        if g.template or not self._ours(g):
            raise PermanentError(f"CT {g.vmid} ({g.name}) on {g.node} exists and is not this site's (tags: "
                                 f"{';'.join(g.tags) or 'none'}); free that CTID or move the container's address")

    def create(self, container: Container) -> None:
        c = container
        g = self._guest(c.ctid)
        if g is not None:  # a retry after a crash: converge instead
            self._claim(g)
            self.update(c)
            return
        self._ensure_pool()
        node = self._assigned.get(c.ctid) or self.place([c])[c.ctid]
        try:
            self._make(c, node)
        except TaskFailed as exc:
            if FULL.search(str(exc)):  # avoid the node for the rest of this run; the next placement skips it
                with self._lock:
                    self.full_nodes.add(node)
                # Temporary: a retry (same driver) places the container on another node.
                raise TemporaryError(f"container {c.ctid} ({c.hostname}): node {node}'s storage {self.storage} is "
                                     f"full; this driver now avoids {node}, so a retry places it elsewhere "
                                     f"(free space on {node} to use it again)\n{exc}", delay=1) from None
            raise
        finally:
            with self._lock:  # placed or failed: a later attempt places it afresh
                self._assigned.pop(c.ctid, None)

    def _make(self, c: Container, node: str) -> None:
        want = ctconfig.desired(c, self.site_name, self.bridge)
        if self.needs_template(c):
            where = self.templates().get(node)
            if where is None:
                raise PermanentError(f"node {node} has no user template (CT {self.template_ctid}+ tagged "
                                     f"{ctconfig.TEMPLATE_TAG}); prepare it once as root (docs/proxmox.md)")
            src_node, src = where
            with self._lock:
                lock = self._source_locks.setdefault(src, threading.Lock())
            with lock:  # PVE locks the source for the whole clone: one clone per source at a time
                self._note(c.ctid, self.api.clone(src_node, src, c.ctid, hostname=c.hostname, pool=self.pool, full=0,
                                                  target=node if node != src_node else None,
                                                  description=self._marker()))
            with self._lock:
                self._where[c.ctid] = node
            self._configure(c, node, want)
        else:
            settable = want.settable()
            tags = settable.pop("tags")  # after create: see the module docstring
            self._note(c.ctid, self.api.create(node, c.ctid, ostemplate=self.ostemplate, storage=self.storage,
                                               rootfs=f"{self.storage}:{c.disk_gb}", features="nesting=1",
                                               unprivileged=1, pool=self.pool, description=self._marker(), **settable))
            with self._lock:
                self._where[c.ctid] = node
            cfg = self.api.config(node, c.ctid)
            self.api.set_config(node, c.ctid, digest=cfg.digest, tags=tags)

    def _config_unlocked(self, node: str, ctid: int, wait: float = 60) -> CtConfig:
        """The config once no task holds it (a clone that timed out earlier may still be running)."""
        deadline = time.monotonic() + wait
        while True:
            cfg = self.api.config(node, ctid)
            if not cfg.lock:
                return cfg
            if time.monotonic() > deadline:
                raise TemporaryError(f"container {ctid} on {node} is still locked ({cfg.lock}); "
                                     "a task is running on it — retry when it has finished", delay=10)
            self.api.sleep(min(2.0, self.ready_poll))

    def _configure(self, c: Container, node: str, want: ctconfig.Desired) -> None:
        cfg = self._config_unlocked(node, c.ctid)
        diff = ctconfig.changes(want, cfg)
        if diff:
            self.api.set_config(node, c.ctid, digest=cfg.digest, **diff)
        if cfg.rootfs_gb is not None and cfg.rootfs_gb > want.disk_gb:
            raise PermanentError(f"container {c.ctid} ({c.hostname}): its disk is {cfg.rootfs_gb} GB and cannot "
                                 f"shrink to the planned {want.disk_gb} GB; raise disk_gb in site.yaml")
        if ctconfig.needs_resize(want, cfg):
            self._note(c.ctid, self.api.resize(node, c.ctid, want.disk_gb))

    def update(self, container: Container) -> None:
        g = self._guest(container.ctid)
        if g is None:
            raise PermanentError(f"container {container.ctid} does not exist on the cluster; create it first")
        self._claim(g)
        node = g.node
        with self._lock:
            self._where[container.ctid] = node
        self._configure(container, node, ctconfig.desired(container, self.site_name, self.bridge))

    def _power(self, ctid: int, action, already: str) -> None:
        try:
            self._note(ctid, action(self.node_of(ctid), ctid))
        except ApiError as exc:  # already in the wanted state: done
            if already not in str(exc):
                raise

    def start(self, ctid: int) -> None:
        self._power(ctid, self.api.start, "already running")

    def stop(self, ctid: int) -> None:
        self._power(ctid, self.api.stop, "not running")

    def destroy(self, ctid: int) -> None:
        g = self._guest(ctid)
        if g is None:
            return
        if not self._ours(g):
            raise PermanentError(f"CT {ctid} is not tagged as this site's (aicommons;{self.site_tag}); not destroying it")
        self.api.destroy(g.node, ctid)
        with self._lock:
            self._where.pop(ctid, None)

    def _archive_room(self, ctids: list[int]) -> list[str]:
        """Containers whose archive PVE would refuse: without Datastore.Allocate on the backup storage,
        a guest may have at most 5 protected backups there (pve-storage PVE/Storage.pm
        `get_max_protected_backups`; vzdump and update_volume_attribute refuse the next one), and CTIDs
        come back with their addresses. Said before anything changes, so a removal never stops half-way."""
        if not ctids:
            return []
        st = self.backup_storage
        if "Datastore.Allocate" in self.api.permissions(f"/storage/{st}"):
            return []  # -1: unlimited
        out = []
        where = {g.vmid: g.node for g in self.api.guests()}
        for ctid in ctids:
            if ctid not in where:
                continue
            kept = [v for v in self.api.backups(where[ctid], st, ctid) if v.protected]
            if len(kept) >= MAX_PROTECTED:
                out.append(f"CT {ctid} already has {len(kept)} protected archives in storage {st!r}, the most PVE "
                           f"allows a guest there without Datastore.Allocate, so its archive before removal would be "
                           f"refused: grant Datastore.Allocate on /storage/{st} (or set max-protected-backups on it), "
                           f"or unprotect and delete old archives ({', '.join(v.volid for v in kept[:2])}, ...)")
        return out

    def archive(self, ctid: int) -> str:
        """Keep a container's data before destroy: vzdump (stop mode, zstd, protected from pruning)
        to `backup_storage`. Returns the archive's volume id (restore: `pct restore CTID VOLID`)."""
        g = self._guest(ctid)
        if g is None:
            raise PermanentError(f"container {ctid} does not exist on the cluster; there is nothing to archive")
        if not self._ours(g):
            raise PermanentError(f"CT {ctid} is not tagged as this site's (aicommons;{self.site_tag}); not archiving it")
        st = self.backup_storage
        if not any(s.storage == st and s.node == g.node and "backup" in s.content for s in self.api.storages()):
            raise PermanentError(f"driver.backup_storage: storage {st!r} on node {g.node} does not exist or does not "
                                 f"hold backups (content 'backup'); name one that does, or remove with --purge")
        before = {v.volid for v in self.api.backups(g.node, st, ctid)}
        self.api.vzdump(g.node, ctid, st, mode="stop", timeout=self.archive_timeout, protected=1,
                        **{"notes-template": f"aicommons {self.site_name}: {{{{guestname}}}} archived before removal"})
        new = sorted((v for v in self.api.backups(g.node, st, ctid) if v.volid not in before), key=lambda v: v.ctime)
        if not new:
            raise PermanentError(f"vzdump of CT {ctid} on {g.node} finished but no new archive is in storage {st!r}; "
                                 "not destroying the container")
        log.info("container %s: archived to %s", ctid, new[-1].volid)
        return new[-1].volid

    def apply_firewall(self, resolved, *, dry_run: bool = False):
        """The site's firewall (render.firewall.firewall_plan) through the API; only differences are written.
        Containers that do not exist yet (or are not this site's) are left for a later run."""
        from aicommons.drivers.proxmox.firewall import apply_firewall
        from aicommons.render.firewall import firewall_plan

        where = {g.vmid: g.node for g in self.api.guests() if self._ours(g)}
        return apply_firewall(self.api, firewall_plan(resolved), where.get, dry_run=dry_run)

    def firewall_diff(self, resolved) -> list[str]:
        """What apply_firewall would change, read only: `ipset.NAME`, `group.NAME`, `container.CTID`."""
        from aicommons.drivers.proxmox.firewall import object_names

        return object_names(self.apply_firewall(resolved, dry_run=True).changed)

    # ---- inside a container -------------------------------------------------------------
    def exec(self, ctid: int, argv: list[str], *, stdin: bytes | None = None, timeout: float = 600) -> ExecResult:
        return self.shell.run(self.node_of(ctid), pct_exec(ctid, argv), stdin=stdin, timeout=timeout)

    def push(self, ctid: int, data: bytes, dest: str, mode: int = 0o644) -> None:
        parent = dest.rsplit("/", 1)[0] or "/"
        mk = self.exec(ctid, ["mkdir", "-p", parent], timeout=60)
        res = self.shell.run(self.node_of(ctid), pct_push(ctid, dest, mode), stdin=data, timeout=300) if mk.ok else mk
        if not res.ok:
            raise PermanentError(f"pct push to CT {ctid}:{dest} failed (rc {res.rc}): {res.stderr.strip()[-300:]}")

    def _has_address(self, node: str, ctid: int, ip: str) -> bool:
        # PVE reads the running container's interfaces (VM.Audit): no ICMP, which the containers'
        # firewall drops (policy_in DROP), and no route from this host to the bridge needed.
        try:
            return any((i.get("inet") or "").split("/")[0] == ip for i in self.api.interfaces(node, ctid))
        except ApiError:
            return False  # not running yet

    def wait_ready(self, ctid: int, timeout: float = 120) -> None:
        node = self.node_of(ctid)
        cfg = self.api.config(node, ctid)
        ip = (cfg.prop("net0").get("ip") or "").split("/")[0]
        if not ip:
            raise PermanentError(f"container {ctid} has no static IP in net0; run update first")
        deadline = time.monotonic() + timeout
        while not self.probe(node, ctid, ip):
            if time.monotonic() > deadline:
                raise TemporaryError(f"container {ctid} ({ip}) on {node} did not answer within {timeout:g}s", delay=10)
            self.api.sleep(self.ready_poll)
        if self._runs_docker(cfg):  # ready = the bundle can run: Docker has started a real container
            provision.ensure_docker(self, ctid)

    def _runs_docker(self, cfg: CtConfig) -> bool:
        tags = set((cfg.get("tags") or "").split(";"))
        host = cfg.get("hostname") or ""
        return "user" in tags or host in self.docker_services or host.rsplit("-", 1)[0] in self.docker_services

    def close(self) -> None:
        self.shell.close()
