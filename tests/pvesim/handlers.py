"""What each modelled endpoint does to the simulated cluster. Keyed by (METHOD, schema path)."""

from __future__ import annotations

import re

from tests.pvesim.access import check, check_vm
from tests.pvesim.state import LINKED_CLONE_TYPES, Cluster, Ct, GiB, PveError

HANDLERS: dict[tuple[str, str], callable] = {}
LXC = "/nodes/{node}/lxc/{vmid}"
FW_CT = LXC + "/firewall"
CONF_KEYS = {"hostname", "memory", "swap", "cores", "onboot", "startup", "tags", "description", "features",
             "unprivileged", "arch", "ostype", "nameserver", "searchdomain", "cpulimit", "cpuunits",
             "protection", "timezone", "hookscript", "tty", "cmode", "console"}


def route(method: str, path: str):
    def deco(fn):
        HANDLERS[(method, path)] = fn
        return fn
    return deco


class Ctx:
    """One request: the cluster, its parameters and who asks."""

    def __init__(self, cl: Cluster, p: dict[str, str], user: str, root: bool):
        self.cl, self.p, self.user, self.root = cl, p, user, root

    def int(self, key: str, default: int | None = None) -> int | None:
        return int(self.p[key]) if key in self.p else default

    def bool(self, key: str) -> bool:
        return str(self.p.get(key, "0")).lower() in ("1", "true", "yes", "on")

    def ct(self) -> Ct:
        return self.cl.ct(self.p["node"], int(self.p["vmid"]))

    def can(self, path: str, priv: str) -> bool:
        return self.root or check(self, path, [priv], noerr=True)


def _split_tags(text: str | None) -> list[str]:
    return [t for t in re.split(r"[;, ]+", text or "") if t]


def _modify_perm(ctx: Ctx, vmid: int, pool: str | None, old: dict[str, str], new: dict[str, str]) -> None:
    """pve-container src/PVE/LXC.pm `check_ct_modify_config_perm`, per key, for a token or user:
    CPU / Memory / Network / Disk / Options privileges via `check_vm_perm` (the pool first when one
    is given: create and clone pass it, a config update does not); a NIC also needs SDN.Use on its
    bridge (`check_bridge_access` -> pve-guest-common `check_vnet_access`: /sdn/zones/localnetwork/<bridge>);
    a new disk Datastore.AllocateSpace on its storage; nesting needs VM.Allocate. Tags go through
    pve-guest-common src/PVE/GuestHelpers.pm `assert_tag_permissions`, which calls
    `check_vm_perm($authuser, $vmid, undef, ['VM.Config.Options'])`: /vms/<vmid> only, never the
    pool given to create - a new container is not in its pool yet, so a pool-only ACL refuses
    tags at create. Free-form tags (datacenter `user-tag-access` default) need nothing more."""
    if ctx.root:
        return
    for key, value in new.items():
        if key in ("cores", "cpuunits", "cpulimit"):
            check_vm(ctx, vmid, pool, ["VM.Config.CPU"])
        elif key in ("memory", "swap"):
            check_vm(ctx, vmid, pool, ["VM.Config.Memory"])
        elif re.fullmatch(r"net\d+", key):
            check_vm(ctx, vmid, pool, ["VM.Config.Network"])
            bridge = dict(i.split("=", 1) for i in value.split(",") if "=" in i).get("bridge")
            if bridge:
                check(ctx, f"/sdn/zones/localnetwork/{bridge}", ["SDN.Use"])
        elif key in ("hostname", "nameserver", "searchdomain"):
            check_vm(ctx, vmid, pool, ["VM.Config.Network"])
        elif key == "rootfs" or re.fullmatch(r"mp\d+", key):
            check_vm(ctx, vmid, pool, ["VM.Config.Disk"])
            check(ctx, f"/storage/{value.split(':', 1)[0]}", ["Datastore.AllocateSpace"])
        elif key == "features":
            if "nesting" in value and "nesting" not in old.get("features", ""):
                check_vm(ctx, vmid, pool, ["VM.Allocate"])
        elif key == "tags":
            check_vm(ctx, vmid, None, ["VM.Config.Options"])
        elif key in ("unprivileged", "arch", "ostype"):
            continue
        else:
            check_vm(ctx, vmid, pool, ["VM.Config.Options"])


def _root_only(ctx: Ctx, old: dict[str, str], new: dict[str, str]) -> None:
    """Settings PVE lets only root@pam change (a token, even root's, is refused)."""
    if ctx.root:
        return
    for key in new:
        if re.fullmatch(r"dev\d+", key) or key == "hookscript":
            raise PveError(403, f"Permission check failed (changing '{key}' is only allowed for root@pam)")
        if re.fullmatch(r"mp\d+|rootfs", key) and re.match(r"^/", new[key].split(",")[0]):
            raise PveError(403, "Permission check failed (bind mounts are only allowed for root@pam)")
    if "features" in new:
        def flags(text):
            return dict(i.split("=", 1) for i in text.split(",") if "=" in i)
        before, after = flags(old.get("features", "")), flags(new["features"])
        changed = {k for k in set(before) | set(after) if before.get(k, "0") != after.get(k, "0")}
        if changed - {"nesting"}:
            raise PveError(403, "Permission check failed (changing feature flags (except nesting) is only allowed for root@pam)")


def _rootfs(storage: str, vmid: int, size_gb: int, base: int | None = None) -> str:
    vol = f"vm-{vmid}-disk-0" if base is None else f"base-{base}-disk-0/vm-{vmid}-disk-0"
    return f"{storage}:{vol},size={size_gb}G"


def _full_fail(cl: Cluster, node: str, vmid: int) -> None:
    if cl.node_full(node):
        raise PveError(500, f"lvcreate 'pve/vm-{vmid}-disk-0' error:   Volume group \"pve\" has insufficient free space")


# ---- cluster, nodes, version ----------------------------------------------------------------
@route("GET", "/version")
def version(ctx):
    return {"version": "9.1.3", "release": "9.1", "repoid": "pvesim"}


@route("GET", "/cluster/status")
def cluster_status(ctx):
    out = [{"type": "cluster", "id": "cluster", "name": "pvesim", "nodes": len(ctx.cl.nodes), "quorate": 1, "version": 3}]
    for i, n in enumerate(ctx.cl.nodes.values(), 1):
        out.append({"type": "node", "id": f"node/{n.name}", "name": n.name, "ip": n.ip, "online": 1,
                    "local": int(i == 1), "nodeid": i, "level": ""})
    return out


@route("GET", "/cluster/resources")
def cluster_resources(ctx):
    return ctx.cl.resources(ctx.p.get("type"), ctx.can)


def next_id_range(cl: Cluster) -> tuple[int, int]:
    """datacenter.cfg `next-id: lower=N,upper=M` (defaults 100 and 1000000)."""
    props = dict(i.split("=", 1) for i in cl.datacenter.get("next-id", "").split(",") if "=" in i)
    return int(props.get("lower", 100)), int(props.get("upper", 1000 * 1000))


@route("GET", "/cluster/nextid")
def nextid(ctx):
    """pve-manager PVE/API2/Cluster.pm `nextid`: with `vmid`, that id if free (else 400); otherwise
    the first free id in datacenter.cfg's next-id range. It reserves nothing."""
    if "vmid" in ctx.p:
        if int(ctx.p["vmid"]) in ctx.cl.cts:
            raise PveError(400, "Parameter verification failed.", {"vmid": f"VM {ctx.p['vmid']} already exists"})
        return ctx.p["vmid"]
    lower, upper = next_id_range(ctx.cl)
    for i in range(lower, upper):
        if i not in ctx.cl.cts:
            return str(i)
    raise PveError(500, f"unable to get any free VMID in range [{lower}, {upper}]")


@route("GET", "/cluster/options")
def cluster_options(ctx):
    """pve-manager PVE/API2/Cluster.pm `get_options`: all of datacenter.cfg with Sys.Audit on /, as
    pve-cluster PVE/DataCenterConfig.pm `parse_datacenter_config` returns it: property strings with a
    format (`next-id`, `migration`, `ha`, ...) decoded into objects by parse_property_string."""
    if not ctx.can("/", "Sys.Audit"):
        return {}
    out: dict[str, object] = dict(ctx.cl.datacenter)
    if out.get("next-id"):
        props = dict(i.split("=", 1) for i in ctx.cl.datacenter["next-id"].split(",") if "=" in i)
        out["next-id"] = {k: int(v) for k, v in props.items() if k in ("lower", "upper")}
    return out


@route("GET", "/cluster/mapping/pci")
def mapping_pci(ctx):
    """pve-manager PVE/API2/Cluster/Mapping/PCI.pm `index`: entries with Mapping.Audit/Use/Modify on
    /mapping/pci/<id> only."""
    return [dict(m) for m in ctx.cl.pci_mappings
            if any(ctx.can(f"/mapping/pci/{m['id']}", p) for p in ("Mapping.Audit", "Mapping.Use", "Mapping.Modify"))]


@route("GET", "/nodes")
def nodes(ctx):
    return list(ctx.cl.resources("node"))


@route("GET", "/nodes/{node}/status")
def node_status(ctx):
    n = ctx.cl.node(ctx.p["node"])
    return {"memory": {"total": n.maxmem, "used": 2 * GiB, "free": n.maxmem - 2 * GiB},
            "cpuinfo": {"cpus": n.maxcpu, "model": "pvesim"}, "uptime": 86400, "pveversion": "pve-manager/9.1.3"}


@route("GET", "/pools")
def pools(ctx):
    """pve-manager PVE/API2/Pool.pm `index`: only pools with Pool.Audit on /pool/<id>."""
    return [{"poolid": k, **v} for k, v in sorted(ctx.cl.pools.items()) if ctx.can(f"/pool/{k}", "Pool.Audit")]


@route("POST", "/pools")
def pool_create(ctx):
    pid = ctx.p["poolid"]
    if pid in ctx.cl.pools:
        raise PveError(500, f"create pool failed: pool '{pid}' already exists")
    ctx.cl.pools[pid] = {"comment": ctx.p.get("comment", "")}


# ---- containers -----------------------------------------------------------------------------
@route("GET", "/nodes/{node}/lxc")
def lxc_list(ctx):
    ctx.cl.node(ctx.p["node"])
    return [{"vmid": str(r["vmid"]), "name": r["name"], "status": r["status"], "maxmem": r["maxmem"],
             "cpus": r["maxcpu"], "tags": r.get("tags", ""), "template": r["template"]}
            for r in ctx.cl.resources("vm", ctx.can) if r["node"] == ctx.p["node"]]


def _check_pool(ctx, pool):
    if pool and pool not in ctx.cl.pools:
        raise PveError(500, f"pool '{pool}' does not exist")


def _linked_clone_ok(cl: Cluster, volid: str) -> None:
    """pve-container `clone_vm` -> pve-storage `volume_has_feature('clone')` (see LINKED_CLONE_TYPES)."""
    st = cl.storage_of(volid)
    if st.plugintype not in LINKED_CLONE_TYPES:
        raise PveError(500, f"Linked clone feature for '{volid}' is not available")


@route("POST", "/nodes/{node}/lxc")
def lxc_create(ctx):
    cl, node, vmid = ctx.cl, ctx.p["node"], int(ctx.p["vmid"])
    cl.node(node)
    if vmid in cl.cts:
        raise PveError(500, f"unable to create CT {vmid} - CT {vmid} already exists on node '{cl.cts[vmid].node}'")
    if "ostemplate" not in ctx.p:
        raise PveError(400, "Parameter verification failed.", {"ostemplate": "property is missing and it is not optional"})
    conf = {k: v for k, v in ctx.p.items() if k in CONF_KEYS or re.fullmatch(r"(net|dev|mp)\d+", k)}
    _root_only(ctx, {}, conf)
    _check_pool(ctx, ctx.p.get("pool"))
    # pve-container src/PVE/API2/LXC.pm `create_vm`: VM.Allocate on /vms/<vmid>, else on the pool
    # given; the ostemplate readable (pve-storage `check_volume_access`); then each key as above.
    pool = ctx.p.get("pool")
    if not ctx.root:
        if not (check(ctx, f"/vms/{vmid}", ["VM.Allocate"], noerr=True)
                or (pool and check(ctx, f"/pool/{pool}", ["VM.Allocate"], noerr=True))):
            raise PveError(403, f"Permission check failed (/vms/{vmid}, VM.Allocate)")
        check(ctx, f"/storage/{ctx.p['ostemplate'].split(':', 1)[0]}", ["Datastore.AllocateSpace", "Datastore.Audit"],
              any_=True)
        # pve-container API2/LXC.pm create_vm: `$unprivileged = 1 if !defined($unprivileged)`, then
        # `check($authuser, '/', ['Sys.Modify']) if !$unprivileged`: privileged needs Sys.Modify on / itself
        if "unprivileged" in ctx.p and not ctx.bool("unprivileged"):
            check(ctx, "/", ["Sys.Modify"])
        _modify_perm(ctx, vmid, pool, {}, {**conf, **({"rootfs": ctx.p["rootfs"]} if "rootfs" in ctx.p else {})})
    m = re.fullmatch(r"([\w\-.]+):(\d+)", ctx.p.get("rootfs", f"{cl.storage}:8"))
    if not m:
        raise PveError(400, "Parameter verification failed.", {"rootfs": "expected STORAGE:SIZE_GB"})
    conf.setdefault("arch", "amd64")
    conf.setdefault("ostype", "debian")
    conf.setdefault("unprivileged", "1")  # create_vm's default (above)
    conf["rootfs"] = _rootfs(m.group(1), vmid, int(m.group(2)))
    conf["lock"] = "create"
    ct = Ct(vmid, node, conf, pool=ctx.p.get("pool"))
    cl.cts[vmid] = ct
    template = ctx.p["ostemplate"]

    def work(task):
        task.log.append(f"extracting archive '{template}'")
        if template not in cl.templates_on_disk.get(node, set()):
            cl.cts.pop(vmid, None)
            raise PveError(500, f"volume '{template}' does not exist")
        try:
            _full_fail(cl, node, vmid)
        except PveError:
            cl.cts.pop(vmid, None)
            raise
        ct.conf.pop("lock", None)
        if ctx.bool("start"):
            ct.status = "running"
    return cl.start_task(node, "vzcreate", str(vmid), ctx.user, work)


@route("POST", LXC + "/clone")
def lxc_clone(ctx):
    cl, node = ctx.cl, ctx.p["node"]
    src = ctx.ct()
    newid = int(ctx.p["newid"])
    if newid in cl.cts:
        raise PveError(500, f"unable to create CT {newid} - CT {newid} already exists on node '{cl.cts[newid].node}'")
    target = ctx.p.get("target", node)
    cl.node(target)
    if target != node and not cl.shared:
        raise PveError(500, f"Can't clone to other node '{target}' - storage '{cl.storage}' is not shared")
    _check_pool(ctx, ctx.p.get("pool"))
    full = ctx.bool("full") or not src.template
    if not ctx.root:  # beyond the schema's check: the disk's storage and the NIC's bridge
        check(ctx, f"/storage/{cl.storage_of(src.conf['rootfs']).id}", ["Datastore.AllocateSpace"])
        if "net0" in src.conf:
            _modify_perm(ctx, newid, ctx.p.get("pool"), {}, {"net0": src.conf["net0"]})
    if not full:
        _linked_clone_ok(cl, src.conf["rootfs"])
    # `clone_vm` sets the 'disk' lock on the source for the whole clone (set_lock($vmid, 'disk')),
    # and the new CT is written with a 'create' lock; both go when the worker ends, however it ends.
    cl.check_lock(src)
    src.conf["lock"] = "disk"
    conf = {k: v for k, v in src.conf.items() if k not in ("lock", "template")}
    conf["rootfs"] = _rootfs(cl.storage, newid, src.disk_gb(), None if full else src.vmid)
    for key in ("hostname", "description"):  # `clone_vm`: both taken from the request when given
        if ctx.p.get(key):
            conf[key] = ctx.p[key]
    conf["lock"] = "create"
    # Not in the pool yet: pve-container `clone_vm` adds the new CT to its pool in the worker, after
    # the disks are cloned (PVE::AccessControl::add_vm_to_pool), so a token whose ACL reaches guests
    # through the pool does not see it until the task ends.
    new = Ct(newid, target, conf, pool=None)
    pool = ctx.p.get("pool")
    cl.cts[newid] = new

    def undo():  # the worker's error path: source unlocked, the half-made CT removed
        src.conf.pop("lock", None)
        cl.cts.pop(newid, None)

    def work(task):
        task.log.append(f"create {'full' if full else 'linked'} clone of mountpoint rootfs ({src.conf.get('rootfs')})")
        src.conf.pop("lock", None)
        try:
            _full_fail(cl, target, newid)
        except PveError:
            cl.cts.pop(newid, None)
            raise
        new.pool = pool
        new.conf.pop("lock", None)
    upid = cl.start_task(node, "vzclone", str(src.vmid), ctx.user, work)
    cl.tasks[upid].undo = undo
    return upid


@route("POST", LXC + "/template")
def lxc_template(ctx):
    ct = ctx.ct()
    ctx.cl.check_lock(ct)
    if ct.status == "running":
        raise PveError(500, "CT is running - unable to convert to template")
    ct.conf["template"] = "1"
    ct.conf["rootfs"] = ct.conf["rootfs"].replace(f"vm-{ct.vmid}-disk", f"base-{ct.vmid}-disk")


@route("GET", LXC + "/config")
def lxc_config(ctx):
    ct = ctx.ct()
    out: dict = dict(ct.conf)
    for k in ("memory", "swap", "cores", "onboot", "unprivileged", "template"):
        if k in out and str(out[k]).isdigit():
            out[k] = int(out[k])
    out["digest"] = ct.digest()
    return out


@route("PUT", LXC + "/config")
def lxc_config_put(ctx):
    ct = ctx.ct()
    ctx.cl.check_lock(ct)
    if ctx.p.get("digest") and ctx.p["digest"] != ct.digest():
        raise PveError(500, "detected modified configuration - file changed by other user? Try again.")
    new = {k: v for k, v in ctx.p.items() if k in CONF_KEYS or re.fullmatch(r"(net|dev|mp)\d+", k)}
    _root_only(ctx, ct.conf, new)
    _modify_perm(ctx, ct.vmid, None, ct.conf, new)
    if "rootfs" in ctx.p:
        raise PveError(400, "Parameter verification failed.", {"rootfs": "use the resize API to change the size"})
    for key in re.split(r"[,;\s]+", ctx.p.get("delete", "")):
        if key:
            ct.conf.pop(key, None)
    ct.conf.update(new)


@route("PUT", LXC + "/resize")
def lxc_resize(ctx):
    ct = ctx.ct()
    ctx.cl.check_lock(ct)
    if ctx.p["disk"] != "rootfs":
        raise PveError(500, f"disk '{ctx.p['disk']}' does not exist")
    m = re.fullmatch(r"(\+?)(\d+)G", ctx.p["size"])
    if not m:
        raise PveError(400, "Parameter verification failed.", {"size": "unable to parse size (use e.g. 100G)"})
    size = ct.disk_gb() + int(m.group(2)) if m.group(1) else int(m.group(2))
    if size < ct.disk_gb():
        raise PveError(500, "unable to shrink disk size")
    if not ctx.root:  # pve-container `resize_vm`: Datastore.AllocateSpace on the volume's storage
        check(ctx, f"/storage/{ctx.cl.storage_of(ct.conf['rootfs']).id}", ["Datastore.AllocateSpace"])

    def work(task):
        ct.conf["rootfs"] = re.sub(r"size=\d+G", f"size={size}G", ct.conf["rootfs"])
    return ctx.cl.start_task(ctx.p["node"], "resize", str(ct.vmid), ctx.user, work)


def _power(ctx, want: str, ttype: str):
    ct = ctx.ct()
    if ct.template:
        raise PveError(500, "you can't start a CT if it's a template")
    if want == "running":
        ctx.cl.check_lock(ct)
        if ct.status == "running":
            raise PveError(500, f"CT {ct.vmid} already running")
    elif ct.status != "running":
        raise PveError(500, f"CT {ct.vmid} not running")

    def work(task):
        ct.status = want
    return ctx.cl.start_task(ctx.p["node"], ttype, str(ct.vmid), ctx.user, work)


HANDLERS[("POST", LXC + "/status/start")] = lambda ctx: _power(ctx, "running", "vzstart")
HANDLERS[("POST", LXC + "/status/stop")] = lambda ctx: _power(ctx, "stopped", "vzstop")
HANDLERS[("POST", LXC + "/status/shutdown")] = lambda ctx: _power(ctx, "stopped", "vzshutdown")


@route("GET", LXC + "/status/current")
def lxc_current(ctx):
    ct = ctx.ct()
    out = {"vmid": ct.vmid, "name": ct.conf.get("hostname"), "status": ct.status, "maxmem": ct.mem_bytes(),
           "cpus": int(ct.conf.get("cores", "1")), "uptime": 100 if ct.status == "running" else 0, "type": "lxc"}
    if ct.lock:
        out["lock"] = ct.lock
    return out


@route("GET", LXC + "/interfaces")
def lxc_interfaces(ctx):
    """pve-container src/PVE/API2/LXC.pm `ip` -> PVE::LXC::get_interfaces: a running CT's addresses."""
    ct = ctx.ct()
    if ct.status != "running":
        raise PveError(500, f"CT {ct.vmid} not running")
    m = re.search(r"ip=([\d./]+)", ct.conf.get("net0", ""))
    return [{"name": "lo", "inet": "127.0.0.1/8"}] + ([{"name": "eth0", "inet": m.group(1)}] if m else [])


@route("DELETE", LXC)
def lxc_destroy(ctx):
    cl, ct = ctx.cl, ctx.ct()
    cl.check_lock(ct)
    if ct.status == "running":
        raise PveError(500, f"CT {ct.vmid} is running - destroy failed")
    ct.conf["lock"] = "destroyed"

    def work(task):
        cl.cts.pop(ct.vmid, None)
        cl.fw_rules.pop(ct.vmid, None)
        cl.fw_options.pop(str(ct.vmid), None)
        for key in [k for k in cl.fw_ipsets if k[0] == str(ct.vmid)]:
            cl.fw_ipsets.pop(key)
    return cl.start_task(ctx.p["node"], "vzdestroy", str(ct.vmid), ctx.user, work)


# ---- tasks ----------------------------------------------------------------------------------
def _task(ctx, priv: str = "Sys.Audit"):
    """pve-manager PVE/API2/Tasks.pm: a task's owner (a token counts as its user's) reads and stops
    it; anyone else needs Sys.Audit (read) or Sys.Modify (stop) on /nodes/<node>."""
    t = ctx.cl.tasks.get(ctx.p["upid"])
    if t is None or t.node != ctx.p["node"]:
        raise PveError(500, f"no such task '{ctx.p['upid']}'")
    if not ctx.root and t.user.split("!")[0] != ctx.user.split("!")[0]:
        check(ctx, f"/nodes/{t.node}", [priv])
    return t


@route("DELETE", "/nodes/{node}/tasks/{upid}")
def task_stop(ctx):
    """Stop a running task (its worker gets SIGTERM and runs its error path)."""
    t = _task(ctx, "Sys.Modify")
    if t.status == "running":
        t.status, t.exitstatus = "stopped", "interrupted by signal"
        t.log.append("received interrupt")
        t.log.append("TASK ERROR: interrupted by signal")
        if callable(t.undo):
            t.undo()
        if t in ctx.cl.hung:
            ctx.cl.hung.remove(t)
            t.done.set()


@route("GET", "/nodes/{node}/tasks/{upid}/status")
def task_status(ctx):
    t = _task(ctx)
    out = {"upid": t.upid, "node": t.node, "pid": t.pid, "pstart": t.pstart, "starttime": t.starttime,
           "type": t.type, "id": t.id, "user": t.user, "status": t.status}
    if t.exitstatus is not None:
        out["exitstatus"] = t.exitstatus
    return out


@route("GET", "/nodes/{node}/tasks/{upid}/log")
def task_log(ctx):
    t = _task(ctx)
    lines = [f"starting task {t.upid}"] + t.log
    return [{"n": i, "t": line} for i, line in enumerate(lines, 1)]


@route("GET", "/access/permissions")
def access_permissions(ctx):
    """pve-access-control src/PVE/API2/AccessControl.pm `permissions`: one's own privileges, for
    `path` or for every path of interest (`get_effective_permissions`)."""
    who = ctx.p.get("userid", ctx.user)
    if who.split("!")[0] != ctx.user.split("!")[0] and not ctx.root:
        check(ctx, "/access", ["Sys.Audit"])
    if "path" in ctx.p:
        return {ctx.p["path"]: dict.fromkeys(sorted(ctx.cl.access.privileges(who, ctx.p["path"], ctx.cl.pool_of)), 1)}
    pool_paths = [f"/vms/{c.vmid}" for c in ctx.cl.cts.values() if c.pool]
    return ctx.cl.access.effective(who, pool_paths, ctx.cl.pool_of)


# The firewall and backup endpoints live in their own modules; importing them registers them.
from tests.pvesim import fw_handlers, storage_handlers  # noqa: E402,F401
