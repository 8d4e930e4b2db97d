"""Simulated backups: `POST /nodes/{node}/vzdump` (a task) and the storage content listing.

A vzdump writes one archive volume per CT into the named storage (which must hold `backup`
content, as `local` does and `local-lvm` does not). Archives outlive the CT, as on PVE.
"""

from __future__ import annotations

import re
import time

from tests.pvesim.access import check
from tests.pvesim.handlers import route
from tests.pvesim.state import PveError


def _storage(ctx, name: str) -> str:
    """The storage's content types on this node, or PVE's error when it has none by that name."""
    ctx.cl.node(ctx.p["node"])
    return ctx.cl.storage_of(name).content


def _notes(template: str, ct, node: str) -> str:
    values = {"guestname": ct.conf.get("hostname", ""), "vmid": str(ct.vmid), "node": node, "cluster": "pvesim"}
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values.get(m.group(1), m.group(0)), template)


@route("POST", "/nodes/{node}/vzdump")
def vzdump(ctx):
    cl, node = ctx.cl, ctx.p["node"]
    storage = ctx.p.get("storage", "local")
    content = _storage(ctx, storage)
    if "vmid" not in ctx.p or ctx.bool("all"):
        raise PveError(400, "Parameter verification failed.", {"vmid": "pvesim models backups of named CTs only"})
    vmids = [int(v) for v in re.split(r"[,;\s]+", ctx.p["vmid"]) if v]
    if not ctx.root:  # pve-manager PVE/API2/VZDump.pm: VM.Backup on each guest, space on the storage
        for vmid in vmids:
            check(ctx, f"/vms/{vmid}", ["VM.Backup"])
        check(ctx, f"/storage/{storage}", ["Datastore.AllocateSpace"])
    mode, compress = ctx.p.get("mode", "snapshot"), ctx.p.get("compress", "0")
    ext = {"zstd": ".zst", "gzip": ".gz", "1": ".lzo", "lzo": ".lzo"}.get(compress, "")
    notes = ctx.p.get("notes-template")
    protected = ctx.bool("protected")
    # pve-storage PVE/Storage.pm get_max_protected_backups: unlimited with Datastore.Allocate on the
    # storage, else the storage's max-protected-backups, else 5; vzdump refuses the next protected
    # backup of a guest beyond it (as update_volume_attribute does when protecting one).
    configured = cl.storage_of(storage).max_protected
    cap = configured if configured is not None else \
        -1 if ctx.root or ctx.can(f"/storage/{storage}", "Datastore.Allocate") else 5

    def work(task):
        task.log.append(f"INFO: starting new backup job: vzdump {' '.join(map(str, vmids))} --storage {storage} "
                        f"--mode {mode} --compress {compress}")
        if "backup" not in content.split(","):
            raise PveError(500, f"could not get storage information for '{storage}': storage '{storage}' does not "
                                "support backups")
        failed = False
        for vmid in vmids:
            ct = cl.cts.get(vmid)
            task.log.append(f"INFO: Starting Backup of VM {vmid} (lxc)")
            if ct is None or ct.node != node or ct.template:
                task.log.append(f"ERROR: Backup of VM {vmid} failed - CT {vmid} does not exist on node {node}")
                failed = True
                continue
            if ct.lock:
                task.log.append(f"ERROR: Backup of VM {vmid} failed - CT is locked ({ct.lock})")
                failed = True
                continue
            if protected and cap > -1:
                have = [v for v in cl.volumes.get((node, storage), {}).values()
                        if v.get("vmid") == vmid and v.get("protected")]
                if len(have) >= cap:
                    task.log.append(f"ERROR: Backup of VM {vmid} failed - The number of protected backups per guest "
                                    f"is limited to {cap} on storage '{storage}'")
                    failed = True
                    continue
            stamp = time.strftime("%Y_%m_%d-%H_%M_%S", time.gmtime())
            name = f"vzdump-lxc-{vmid}-{stamp}.tar{ext}"
            task.log.append(f"INFO: status = {ct.status}")
            task.log.append(f"INFO: backup mode: {mode}")
            task.log.append(f"INFO: creating vzdump archive '/var/lib/vz/dump/{name}'")
            entry = {"volid": f"{storage}:backup/{name}", "content": "backup", "format": f"tar{ext}",
                     "vmid": vmid, "ctime": int(time.time()), "size": ct.disk_gb() * 1024**2 * 3 + 4096,
                     "protected": int(protected)}
            if notes:
                entry["notes"] = _notes(notes, ct, node)
            cl.volumes.setdefault((node, storage), {})[entry["volid"]] = entry
            task.log.append(f"INFO: Finished Backup of VM {vmid} (00:00:01)")
        if failed:
            raise PveError(500, "job errors")
        task.log.append("INFO: Backup job finished successfully")
    return cl.start_task(node, "vzdump", ",".join(map(str, vmids)), ctx.user, work)


@route("GET", "/nodes/{node}/storage/{storage}/content")
def storage_content(ctx):
    cl, node, storage = ctx.cl, ctx.p["node"], ctx.p["storage"]
    content = _storage(ctx, storage)
    rows: list[dict] = []
    if storage == cl.storage:
        for ct in cl.cts.values():
            if ct.node == node or cl.shared:
                rows.append({"volid": ct.conf.get("rootfs", "").split(",")[0], "content": "rootdir", "format": "raw",
                             "vmid": ct.vmid, "size": ct.disk_gb() * 1024**3})
    if "vztmpl" in content:
        rows += [{"volid": v, "content": "vztmpl", "format": "tzst", "size": 120 * 1024**2}
                 for v in sorted(cl.templates_on_disk.get(node, set())) if v.startswith(f"{storage}:")]
    rows += list(cl.volumes.get((node, storage), {}).values())
    want = set(filter(None, ctx.p.get("content", "").split(",")))
    vmid = ctx.int("vmid")
    return [dict(r) for r in rows if (not want or r["content"] in want) and (vmid is None or r.get("vmid") == vmid)]
