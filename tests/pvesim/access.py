"""The simulator's permission model: users, API tokens, roles and ACLs, as pve-access-control has them.

Traced to upstream (proxmox/pve-access-control, src/):
- `PVE/AccessControl.pm` `roles()`: walk the ACL path from `/`; at each level a token's own entry,
  else the user's entry, replaces what was inherited; an entry applies to deeper paths only when
  it propagates (`-propagate 0` covers exactly its own path).
- `PVE/RPCEnvironment.pm` `$compile_acl_path`: `/vms/<id>` also gets the roles the user holds on
  `/pool/<pool>` of the pool the guest belongs to (never overriding an explicit entry).
- `PVE/RPCEnvironment.pm` `permissions()`: `root@pam` may do anything; a token without privilege
  separation has exactly its user's privileges; with privsep, the token's privileges on a path
  are those its own ACLs grant *intersected with* its user's privileges there.
- `PVE/RPCEnvironment.pm` `check_vm_perm()`: a given pool is checked first (create and clone pass
  the target pool; a plain config update does not).
- `PVE/RPCEnvironment.pm` `get_effective_permissions()`: what `GET /access/permissions` lists.
- The privilege names are `$privgroups` in `PVE/AccessControl.pm`.
NoAccess, groups and realms are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.pvesim.state import PveError

PRIVILEGES = frozenset("""
VM.Config.Disk VM.Config.CPU VM.Config.Memory VM.Config.Network VM.Config.HWType VM.Config.Options VM.Allocate
VM.Clone VM.GuestAgent.Unrestricted VM.Migrate VM.Replicate VM.Snapshot VM.Snapshot.Rollback VM.Config.CDROM
VM.Config.Cloudinit VM.Console VM.Backup VM.GuestAgent.FileRead VM.GuestAgent.FileSystemMgmt
VM.GuestAgent.FileWrite VM.PowerMgmt VM.Audit VM.GuestAgent.Audit Sys.PowerMgmt Sys.Modify Sys.Incoming
Sys.AccessNetwork Sys.Console Sys.Syslog Sys.Audit Datastore.Allocate Datastore.AllocateTemplate
Datastore.AllocateSpace Datastore.Audit SDN.Allocate SDN.Audit SDN.Use Realm.Allocate User.Modify Group.Allocate
Realm.AllocateUser Pool.Allocate Pool.Audit Mapping.Modify Mapping.Use Mapping.Audit""".split())


@dataclass
class Acl:
    path: str
    who: str  # a user (aicommons@pve) or a token id (aicommons@pve!apply)
    role: str
    propagate: bool = True


@dataclass
class Access:
    roles: dict[str, frozenset[str]] = field(default_factory=lambda: {"Administrator": PRIVILEGES})
    acls: list[Acl] = field(default_factory=list)
    privsep: dict[str, bool] = field(default_factory=dict)  # token id -> privilege separation

    def add_role(self, name: str, privs: str | list[str]) -> None:
        names = privs.split() if isinstance(privs, str) else list(privs)
        unknown = set(names) - PRIVILEGES
        if unknown:  # pveum refuses unknown privilege names
            raise ValueError(f"invalid privilege name(s) {sorted(unknown)}")
        self.roles[name] = frozenset(names)

    def grant(self, path: str, who: str, role: str, propagate: bool = True) -> None:
        if role not in self.roles:
            raise ValueError(f"role '{role}' does not exist")
        self.acls.append(Acl(path if path == "/" else "/" + path.strip("/"), who, role, propagate))

    # ---- AccessControl.pm roles() ----------------------------------------------------------
    def _roles(self, who: str, path: str) -> dict[str, bool]:
        parts = [""] if path == "/" else path.split("/")
        roles: dict[str, bool] = {}
        here = ""
        for i, p in enumerate(parts):
            here = "/" if i == 0 else (here.rstrip("/") + "/" + p)
            final = i == len(parts) - 1
            new = {a.role: a.propagate for a in self.acls if a.path == here and a.who == who and (final or a.propagate)}
            if new:
                roles = new
        return roles

    def _compiled(self, who: str, path: str, pool_of) -> set[str]:
        roles = dict(self._roles(who, path))
        if path.startswith("/vms/"):
            pool = pool_of(int(path.split("/")[2])) if path.split("/")[2].isdigit() else None
            if pool:
                for role in self._roles(who, f"/pool/{pool}"):
                    roles.setdefault(role, False)
        return {p for r in roles for p in self.roles.get(r, ())}

    def privileges(self, who: str, path: str, pool_of=lambda vmid: None) -> set[str]:
        """RPCEnvironment::permissions: the privileges `who` holds on `path`."""
        if who == "root@pam":
            return set(PRIVILEGES)
        user, _, token = who.partition("!")
        user_privs = self._compiled(user, path, pool_of)
        if not token or not self.privsep.get(who, True):
            return user_privs
        return self._compiled(who, path, pool_of) & user_privs

    def effective(self, who: str, pool_paths: list[str], pool_of) -> dict[str, dict[str, int]]:
        """RPCEnvironment::get_effective_permissions: every path of interest with what `who` may do."""
        paths = {"/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms"}
        paths |= {a.path for a in self.acls} | set(pool_paths)
        out = {}
        for p in sorted(paths):
            privs = self.privileges(who, p, pool_of)
            if privs:
                out[p] = dict.fromkeys(sorted(privs), 1)
        return out


def check(ctx, path: str, privs: list[str], any_: bool = False, noerr: bool = False) -> bool:
    """RPCEnvironment::check / check_any for the request's user; raises PVE's 403 unless noerr."""
    have = ctx.cl.access.privileges(ctx.user, path, ctx.cl.pool_of)
    ok = any(p in have for p in privs) if any_ else all(p in have for p in privs)
    if not ok and not noerr:
        missing = privs[0] if any_ else next(p for p in privs if p not in have)
        raise PveError(403, f"Permission check failed ({path}, {'|'.join(privs) if any_ else missing})")
    return ok


def check_vm(ctx, vmid: int, pool: str | None, privs: list[str]) -> None:
    """RPCEnvironment::check_vm_perm: the target pool (when given) first, then /vms/<vmid>."""
    if pool and check(ctx, f"/pool/{pool}", privs, noerr=True):
        return
    check(ctx, f"/vms/{vmid}", privs)


def schema_check(ctx, expr, params: dict[str, str]) -> bool:
    """Evaluate an endpoint's published `permissions.check` (the schema carries upstream's own
    expression: ["perm", path, [privs], "any", 1, "require_param", p], ["and", ...], ["or", ...])."""
    op = expr[0]
    if op == "and":
        return all(schema_check(ctx, e, params) for e in expr[1:])
    if op == "or":
        return any(schema_check(ctx, e, params) for e in expr[1:])
    if op == "perm":
        path, privs, opts = expr[1], expr[2], dict(zip(expr[3::2], expr[4::2], strict=False))
        need = opts.get("require_param")
        if need and need not in params:
            return False
        for k, v in params.items():
            path = path.replace("{" + k + "}", str(v))
        return check(ctx, path, privs, any_=bool(opts.get("any")), noerr=True)
    if op == "userid-param":  # "self": a user may act on their own account
        return params.get("userid", ctx.user.split("!")[0]) == ctx.user.split("!")[0]
    return False  # anything else: not granted (pvesim models only what the driver's calls use)


def enforce(ctx, ep_info: dict, params: dict[str, str]) -> None:
    """The RPC layer's check before a handler runs (RPCEnvironment::check_api2_permissions)."""
    if ctx.root:
        return
    perms = ep_info.get("permissions")
    if not perms:  # no permissions block: root@pam only
        raise PveError(403, "Permission check failed (user != root@pam)")
    if perms.get("user") == "all":  # the handler checks what it needs itself
        return
    expr = perms.get("check")
    if expr is None or not schema_check(ctx, expr, params):
        raise PveError(403, "Permission check failed")
