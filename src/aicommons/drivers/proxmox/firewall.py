"""Apply `aicommons.render.firewall.FirewallPlan` through the PVE API, changing only what differs.

Read each object first (cluster ipsets, security groups, per-container rules and options) and
write only the difference, so a second run makes no writing call. A rule list that differs is
rewritten whole (delete from the bottom, add in order): rule order is meaning in a firewall.
`dry_run=True` only reads and reports what would change (the engine's plan uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aicommons.drivers.proxmox.api import PveApi

RULE_KEYS = ("type", "action", "source", "dest", "proto", "dport", "comment", "enable")


@dataclass
class FirewallReport:
    writes: int = 0  # writing calls made (or, in a dry run, that would be made)
    changed: list[str] = field(default_factory=list)  # API paths of the objects that differ(ed)
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False

    def write(self, api: PveApi, method: str, path: str, **params) -> None:
        if not self.dry_run:
            api.call(method, path, **params)
        self.writes += 1


def _norm(rule: dict) -> tuple:
    return tuple(str(rule.get(k, "")) if k != "enable" else str(int(rule.get(k, 1) or 0)) for k in RULE_KEYS)


def _sync_rules(api: PveApi, path: str, want: list[dict], rep: FirewallReport, exists: bool = True) -> None:
    have = sorted(api.get(path), key=lambda r: int(r.get("pos", 0))) if exists else []
    if exists and [_norm(r) for r in have] == [_norm(r) for r in want]:
        return
    for r in reversed(have):
        rep.write(api, "DELETE", f"{path}/{int(r['pos'])}")
    for pos, r in enumerate(want):
        rep.write(api, "POST", path, pos=pos, **r)
    rep.changed.append(path)


def _sync_ipset(api: PveApi, base: str, s, existing: set[str], rep: FirewallReport) -> None:
    before = rep.writes
    if s.name not in existing:
        rep.write(api, "POST", base, name=s.name, comment=s.comment or None)
        have: dict[str, bool] = {}
    else:
        have = {e["cidr"]: bool(e.get("nomatch")) for e in api.get(f"{base}/{s.name}")}
    want = {c: False for c in s.cidrs} | {c: True for c in s.nomatch}
    for cidr in [c for c in have if c not in want or have[c] != want[c]]:
        rep.write(api, "DELETE", f"{base}/{s.name}/{cidr.replace('/', '%2F')}")
        have.pop(cidr)
    for cidr, nomatch in want.items():
        if cidr not in have:
            rep.write(api, "POST", f"{base}/{s.name}", cidr=cidr, nomatch=1 if nomatch else None)
    if rep.writes > before:
        rep.changed.append(f"{base}/{s.name}")


def apply_firewall(api: PveApi, plan, node_of, *, dry_run: bool = False) -> FirewallReport:
    """`node_of(ctid)` -> node; containers that do not exist yet are skipped (apply again later)."""
    rep = FirewallReport(dry_run=dry_run)
    if str(api.get("cluster/firewall/options").get("enable", 0)) != "1":
        # Enabling it is root's call: with policy_in DROP it can cut off the GUI (8006) and SSH.
        rep.notes.append("the datacenter firewall is disabled, so these rules are not enforced yet: enable it "
                         "(Datacenter > Firewall > Options) after allowing 8006 and 22 from your admin network")
    existing = {d["name"] for d in api.get("cluster/firewall/ipset")}
    for s in plan.ipsets:
        _sync_ipset(api, "cluster/firewall/ipset", s, existing, rep)
    groups = {d["group"] for d in api.get("cluster/firewall/groups")}
    for g in plan.groups:
        if g.name not in groups:
            rep.write(api, "POST", "cluster/firewall/groups", group=g.name, comment=g.comment or None)
        # In a dry run a missing group stays missing: there is nothing to read, all its rules are new.
        _sync_rules(api, f"cluster/firewall/groups/{g.name}", [r.to_api() for r in g.rules], rep,
                    exists=g.name in groups or not dry_run)
    for c in plan.containers:
        node = node_of(c.ctid)
        if node is None:
            continue
        base = f"nodes/{node}/lxc/{c.ctid}/firewall"
        _sync_rules(api, f"{base}/rules", [r.to_api() for r in c.rules], rep)
        have = api.get(f"{base}/options")
        diff = {k: v for k, v in c.options.items() if str(have.get(k)) != str(v)}
        if diff:
            rep.write(api, "PUT", f"{base}/options", **diff)
            rep.changed.append(f"{base}/options")
    return rep


def object_names(paths: list[str]) -> list[str]:
    """API paths of changed objects as the engine's names: `ipset.X`, `group.X`, `container.N`."""
    out: list[str] = []
    for p in paths:
        parts = p.strip("/").split("/")
        if parts[:3] == ["cluster", "firewall", "ipset"]:
            name = f"ipset.{parts[3]}"
        elif parts[:3] == ["cluster", "firewall", "groups"]:
            name = f"group.{parts[3]}"
        elif parts[0] == "nodes" and parts[2] == "lxc":
            name = f"container.{parts[3]}"
        else:
            name = p
        if name not in out:
            out.append(name)
    return out
