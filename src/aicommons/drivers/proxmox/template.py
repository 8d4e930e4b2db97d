"""The user template: Debian 12 with features nesting=1,keyctl=1 (Docker in an unprivileged CT).

keyctl, device passthrough and raw lxc.* keys are root-only in PVE: an API token (even
root@pam's) is refused. So the template is built ONCE PER NODE with root@pam's password
(`build_template`) or by hand with `pct` (docs/proxmox.md), and the driver only adopts it:
`check_template` says what is wrong with an existing one. Clones inherit all of it.
"""

from __future__ import annotations

from aicommons.drivers.proxmox.api import ApiError, PveApi
from aicommons.drivers.proxmox.ctconfig import TEMPLATE_TAG
from aicommons.errors import PermanentError

FEATURES = {"nesting": "1", "keyctl": "1"}


def check_template(api: PveApi, node: str, vmid: int) -> list[str]:
    """Problems with the template at node/vmid (empty = usable for the driver's linked clones)."""
    try:
        cfg = api.config(node, vmid)
    except ApiError as exc:
        return [f"CT {vmid} on {node}: {exc}"]
    problems = []
    feats = cfg.prop("features")
    missing = [f"{k}={v}" for k, v in FEATURES.items() if feats.get(k) != v]
    if missing:
        # Docker in an unprivileged container needs both (nesting: its own mounts and /proc; keyctl: runc's
        # session keyring); a clone copies them, and only root@pam may set keyctl
        # (pve-container `check_ct_modify_config_perm`: any feature but nesting is root-only).
        want = ",".join(f"{k}={v}" for k, v in {**feats, **FEATURES}.items())
        problems.append(f"CT {vmid} on {node}: features must include {' and '.join(missing)} (Docker in an "
                        f"unprivileged container needs nesting=1 and keyctl=1): as root on {node}, "
                        f"`pct set {vmid} --features {want}` (root-only), or make the template again as "
                        "docs/proxmox.md shows; containers cloned before keep their old features")
    if cfg.get("template") not in ("1", "True", "true"):
        problems.append(f"CT {vmid} on {node} is not a template (pct template {vmid})")
    if cfg.get("unprivileged") not in ("1", "True", "true"):
        problems.append(f"CT {vmid} on {node} should be unprivileged")
    return problems


def build_template(root: PveApi, node: str, vmid: int, *, ostemplate: str, storage: str, bridge: str = "vmbr0",
                   disk_gb: int = 4, prepare=None, pool: str | None = "aicommons") -> None:
    """Create the template with root@pam's API session, in the site's pool: the token sees and
    clones only what the pool's ACL covers. `prepare(ctid)` (optional) runs while it is started,
    e.g. `provision.ensure_docker` over SSH, so clones come with Docker installed."""
    if pool and pool not in root.pools():
        root.create_pool(pool)
    if any(g.vmid == vmid for g in root.guests()):
        problems = check_template(root, node, vmid)
        if problems:
            raise PermanentError("the template exists but is not usable: " + "; ".join(problems))
        return
    root.create(node, vmid, ostemplate=ostemplate, hostname="aicommons-template", storage=storage,
                rootfs=f"{storage}:{disk_gb}", features="nesting=1,keyctl=1", unprivileged=1, memory=1024,
                swap=512, cores=2, net0=f"name=eth0,bridge={bridge},ip=dhcp", tags=TEMPLATE_TAG, pool=pool)
    if prepare is not None:
        root.start(node, vmid)
        try:
            prepare(vmid)
        finally:
            root.stop(node, vmid)
    root.make_template(node, vmid)
