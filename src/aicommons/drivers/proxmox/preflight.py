"""Before any change: can this token do what the site needs, on storage that can hold it?

Reads only. Asks PVE what the token may do on each path (`GET /access/permissions?path=…`, which
any token may ask about itself, with pools, propagation and privilege separation already
applied by PVE) and compares it with `required()`; reads the storages' plugin types and content
from `/cluster/resources`; finds the templates. Every problem is reported, not only the first.
`aicommons proxmox check` prints the report; `ProxmoxDriver.check(plan)` refuses a plan with
problems before the engine changes anything. The ACL that satisfies `required()` is the one
docs/proxmox.md gives as pveum commands (tests run those commands against pvesim).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aicommons.drivers.proxmox.api import ApiError
from aicommons.drivers.proxmox.template import check_template

# pve-container clone_vm -> pve-storage volume_has_feature('clone', …, valid_target_formats raw/subvol):
# only these storage types can hold a linked clone of a container (Plugin.pm refuses it for every
# file-based type - dir, nfs, cifs, cephfs, glusterfs - because its clone is a qcow2 image).
LINKED_CLONE_TYPES = ("lvmthin", "zfspool", "rbd", "btrfs")

# All the token needs on `/` itself (granted without propagation). Anything more there is refused:
# Sys.Modify on `/` lets a token create privileged containers (pve-container API2/LXC.pm
# `create_vm`: `check($authuser, '/', ['Sys.Modify']) if !$unprivileged`), edit the datacenter
# firewall's options, rules, ipsets and groups (pve-firewall Firewall.pm `rules_modify_permissions`
# 'cluster'/'group') and the datacenter options (`PUT /cluster/options`); the site needs none of it.
ROOT_PRIVS = frozenset({"Sys.Audit"})

VM_PRIVS = ("VM.Allocate", "VM.Clone", "VM.Audit", "VM.PowerMgmt", "VM.Config.Disk", "VM.Config.CPU",
            "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "VM.Backup", "Pool.Audit")


@dataclass(frozen=True)
class Need:
    path: str
    priv: str
    why: str
    optional: bool = False  # missing: a note, not a refusal


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [f"problem: {p}" for p in self.problems] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines) or "ok: the token can do everything the site needs"


def required(*, pool: str, storage: str, template_storage: str, backup_storage: str, bridge: str,
             nodes: list[str]) -> list[Need]:
    """(path, privilege, why) for everything the driver does; docs/proxmox.md grants exactly these."""
    why_vm = {"VM.Allocate": "create, clone into and destroy containers of the pool",
              "VM.Clone": "clone the user templates (they sit in the pool)",
              "VM.Audit": "see the pool's containers and read their configs",
              "VM.PowerMgmt": "start and stop containers", "VM.Config.Disk": "size root disks",
              "VM.Config.CPU": "set cores", "VM.Config.Memory": "set memory and swap",
              "VM.Config.Network": "set net0, hostname and the containers' firewall",
              "VM.Config.Options": "set tags, onboot and startup order",
              "VM.Backup": "archive a container before it is removed",
              "Pool.Audit": "see the pool and the pool field of its guests"}
    out = [Need(f"/pool/{pool}", p, why_vm[p]) for p in VM_PRIVS]
    out += [Need(f"/storage/{storage}", "Datastore.AllocateSpace", "put container disks on it"),
            Need(f"/storage/{storage}", "Datastore.Audit", "see its type and content"),
            Need(f"/storage/{template_storage}", "Datastore.Audit", "read the OS template"),
            Need(f"/storage/{backup_storage}", "Datastore.AllocateSpace", "write archives of removed containers"),
            Need(f"/storage/{backup_storage}", "Datastore.Audit", "list those archives"),
            Need(f"/sdn/zones/localnetwork/{bridge}", "SDN.Use", f"attach containers to {bridge}"),
            Need("/", "Sys.Audit", "read the cluster's nodes and addresses, the next-id range and whether the "
                 "datacenter firewall is on")]
    out += [Need(f"/nodes/{n}", "Sys.Audit", f"read {n}'s memory and cores for placement") for n in nodes]
    out += [Need("/vms", "VM.Audit", "count the memory of guests outside the pool (QEMU VMs, other teams' "
                 "containers) in placement; without it only what each node uses now is counted", optional=True),
            Need(f"/storage/{backup_storage}", "Datastore.Allocate", "keep more than 5 protected archives per CTID "
                 "(PVE's limit without it; CTIDs come back with their addresses, and the 6th removal at one address "
                 "is refused before it starts)", optional=True),
            Need("/mapping/pci", "Mapping.Audit", "find GPU nodes (PCI resource mappings)", optional=True)]
    return out


def run(api, *, pool: str, storage: str, template: str, backup_storage: str, bridge: str,
        nodes: list[str] | None, needs_clones: bool, template_ctid: int, planned_ctids: Sequence[int] = ()) -> Report:
    rep = Report()
    all_nodes = [n.name for n in api.nodes()]
    use = [n for n in all_nodes if not nodes or n in nodes]
    for n in nodes or ():
        if n not in all_nodes:
            rep.problems.append(f"driver.nodes: {n} is not a node of this cluster (nodes: {', '.join(all_nodes)})")
    have: dict[str, set[str]] = {}
    for need in required(pool=pool, storage=storage, template_storage=template.split(":", 1)[0],
                         backup_storage=backup_storage, bridge=bridge, nodes=use):
        if need.path not in have:
            have[need.path] = api.permissions(need.path)
        if need.priv not in have[need.path]:
            msg = f"missing {need.priv} on {need.path}: needed to {need.why}"
            (rep.notes if need.optional else rep.problems).append(msg)
    _too_much_on_root(rep, have.get("/", set()))
    _leftover_cluster_objects(api, rep)
    _storages(api, rep, storage=storage, backup_storage=backup_storage, nodes=use, needs_clones=needs_clones)
    _os_template(api, rep, template=template, nodes=use)
    if needs_clones:
        _templates(api, rep, pool=pool, template_ctid=template_ctid, nodes=use)
    _next_id(api, rep, planned_ctids)
    return rep


def _too_much_on_root(rep: Report, privs: set[str]) -> None:
    extra = sorted(set(privs) - ROOT_PRIVS)
    if not extra:
        return
    why = ("Sys.Modify there lets it create privileged containers and switch the datacenter firewall off; "
           if "Sys.Modify" in extra else "")
    rep.problems.append(
        f"the token holds more than the site needs on /: {' '.join(extra)} ({why}it needs only Sys.Audit there). "
        "Grant / exactly as docs/proxmox.md does: `pveum acl delete / -user aicommons@pve -role <its role>` and "
        "`pveum acl modify / -user aicommons@pve -role AicommonsCluster -propagate 0` with `pveum role modify "
        "AicommonsCluster -privs Sys.Audit` (a root@pam token, or Administrator on /, is refused for the same reason)")


def _leftover_cluster_objects(api, rep: Report) -> None:
    """Earlier versions wrote the site's ipsets and security groups on the datacenter; the token can
    no longer remove them (Sys.Modify on /), and containers no longer use them."""
    try:
        sets = [d["name"] for d in api.get("cluster/firewall/ipset") if d["name"].startswith("aic-")]
        groups = [d["group"] for d in api.get("cluster/firewall/groups") if d["group"].startswith("aic-")]
    except ApiError:  # a missing Sys.Audit on / is reported above
        return
    if not sets and not groups:
        return
    how = [f"pvesh delete /cluster/firewall/ipset/{n} --force 1" for n in sets]
    if groups:  # the API deletes only an empty group (pve-firewall Groups.pm delete_security_group)
        how.append(f"delete the sections of group {', '.join(groups)} from /etc/pve/firewall/cluster.fw")
    rep.notes.append(f"datacenter firewall objects of an earlier aicommons version are unused once an apply has given "
                     f"the containers their own rules ({', '.join(['ipset ' + n for n in sets] + ['group ' + g for g in groups])}); "
                     f"remove them as root: {'; '.join(how)}")


def _storages(api, rep: Report, *, storage: str, backup_storage: str, nodes: list[str], needs_clones: bool) -> None:
    rows = api.storages()
    for n in nodes:
        st = next((s for s in rows if s.storage == storage and s.node == n), None)
        if st is None:
            rep.problems.append(f"driver.storage: storage '{storage}' is not visible on node {n} (it does not exist "
                                "there, or the token lacks Datastore.Audit on it)")
            continue
        if "rootdir" not in st.content:
            rep.problems.append(f"driver.storage: storage '{storage}' ({st.plugintype}) does not hold container disks "
                                "(content 'rootdir'); enable it or name another storage")
        if needs_clones and st.plugintype and st.plugintype not in LINKED_CLONE_TYPES:
            rep.problems.append(
                f"driver.storage: storage '{storage}' is of type {st.plugintype}, which cannot hold linked clones of a "
                f"container template (Proxmox allows them for containers only on {', '.join(LINKED_CLONE_TYPES)}); "
                "put the containers on such a storage (local-lvm, ZFS, Ceph RBD)")
        if not any(s.storage == backup_storage and s.node == n and "backup" in s.content for s in rows):
            rep.problems.append(f"driver.backup_storage: storage '{backup_storage}' on node {n} is not visible or does "
                                "not hold backups (content 'backup')")
    rep.problems[:] = list(dict.fromkeys(rep.problems))  # a storage's type is the same on every node: say it once


def _os_template(api, rep: Report, *, template: str, nodes: list[str]) -> None:
    """The OS template on every node that may create a container: a storage that is not shared
    (`local`) holds its own files on each node, so a template downloaded on one node is missing on
    the next, and the create fails there mid-apply."""
    storage = template.split(":", 1)[0]
    missing = [n for n in nodes if template not in {v.volid for v in api.templates(n, storage)}]
    if missing:
        rep.problems.append(f"driver.template: {template} is not on node(s) {', '.join(missing)}: download it there "
                            f"(`pveam download <node> {storage} {template.split('/', 1)[-1]}` on each), or keep "
                            "OS templates on a shared storage")


def _templates(api, rep: Report, *, pool: str, template_ctid: int, nodes: list[str]) -> None:
    guests = api.guests()
    found = [g for g in guests if g.template and ("aicommons-template" in g.tags
                                                  or template_ctid <= g.vmid < template_ctid + 100)]
    if not found:
        rep.problems.append(f"no user template is visible to the token: make it once as root (docs/proxmox.md) and put "
                            f"it in the pool (`pveum pool modify {pool} --vms {template_ctid}`): a guest outside the pool is "
                            "invisible to the token")
        return
    for g in found:
        if g.pool not in (None, pool):
            rep.problems.append(f"template CT {g.vmid} on {g.node} is in pool {g.pool}, not {pool}: the token cannot "
                                "clone it")
        if "VM.Clone" not in api.permissions(f"/vms/{g.vmid}"):
            rep.problems.append(f"missing VM.Clone on /vms/{g.vmid} (template on {g.node}): add it to pool {pool}")
            continue
        # Its features (nesting and keyctl: Docker in an unprivileged container needs both), that it is
        # unprivileged, and that it is a template: a clone inherits all of it, and only root may change
        # features (pve-container `check_ct_modify_config_perm`).
        rep.problems += check_template(api, g.node, g.vmid)


def _next_id(api, rep: Report, ctids) -> None:
    opts = api.get("cluster/options") or {}
    # An object, not the file's `lower=N,upper=M` string: parse_datacenter_config decodes it
    # (pve-cluster PVE/DataCenterConfig.pm).
    props = opts.get("next-id") or {}
    if not isinstance(props, dict):
        rep.problems.append(f"/cluster/options next-id is {props!r}, not the object PVE returns: is this Proxmox VE 7 or newer?")
        return
    lower, upper = int(props.get("lower", 100)), int(props.get("upper", 1_000_000))
    inside = sorted(c for c in ctids if lower <= c < upper)
    if inside:
        rep.notes.append(f"CTIDs {inside[0]}–{inside[-1]} of this site lie in the cluster's next-id range "
                         f"[{lower}, {upper}): the GUI offers free ids there, so someone may take one before the site "
                         f"creates it; move the range past them (pvesh set /cluster/options --next-id "
                         f"lower={max(ctids) + 1})")
