"""Apply `aicommons.render.firewall.FirewallPlan` through the PVE API, changing only what differs.

Read each object first (cluster ipsets, security groups, per-container rules and options) and
write only the difference, so a second run makes no writing call. A rule list that differs is
rewritten whole (delete from the bottom, add in order): rule order is meaning in a firewall.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aicommons.drivers.proxmox.api import PveApi

RULE_KEYS = ("type", "action", "source", "dest", "proto", "dport", "comment", "enable")


@dataclass
class FirewallReport:
    writes: int = 0
    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _norm(rule: dict) -> tuple:
    return tuple(str(rule.get(k, "")) if k != "enable" else str(int(rule.get(k, 1) or 0)) for k in RULE_KEYS)


def _sync_rules(api: PveApi, path: str, want: list[dict], rep: FirewallReport) -> None:
    have = sorted(api.get(path), key=lambda r: int(r.get("pos", 0)))
    if [_norm(r) for r in have] == [_norm(r) for r in want]:
        return
    for r in reversed(have):
        api.call("DELETE", f"{path}/{int(r['pos'])}")
        rep.writes += 1
    for pos, r in enumerate(want):
        api.call("POST", path, pos=pos, **r)
        rep.writes += 1
    rep.changed.append(path)


def _sync_ipset(api: PveApi, base: str, s, existing: set[str], rep: FirewallReport) -> None:
    before = rep.writes
    if s.name not in existing:
        api.call("POST", base, name=s.name, comment=s.comment or None)
        rep.writes += 1
        have: dict[str, bool] = {}
    else:
        have = {e["cidr"]: bool(e.get("nomatch")) for e in api.get(f"{base}/{s.name}")}
    want = {c: False for c in s.cidrs} | {c: True for c in s.nomatch}
    for cidr in [c for c in have if c not in want or have[c] != want[c]]:
        api.call("DELETE", f"{base}/{s.name}/{cidr.replace('/', '%2F')}")
        rep.writes += 1
        have.pop(cidr)
    for cidr, nomatch in want.items():
        if cidr not in have:
            api.call("POST", f"{base}/{s.name}", cidr=cidr, nomatch=1 if nomatch else None)
            rep.writes += 1
    if rep.writes > before:
        rep.changed.append(f"{base}/{s.name}")


def apply_firewall(api: PveApi, plan, node_of) -> FirewallReport:
    """`node_of(ctid)` -> node; containers that do not exist yet are skipped (apply again later)."""
    rep = FirewallReport()
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
            api.call("POST", "cluster/firewall/groups", group=g.name, comment=g.comment or None)
            rep.writes += 1
        _sync_rules(api, f"cluster/firewall/groups/{g.name}", [r.to_api() for r in g.rules], rep)
    for c in plan.containers:
        node = node_of(c.ctid)
        if node is None:
            continue
        base = f"nodes/{node}/lxc/{c.ctid}/firewall"
        _sync_rules(api, f"{base}/rules", [r.to_api() for r in c.rules], rep)
        have = api.get(f"{base}/options")
        diff = {k: v for k, v in c.options.items() if str(have.get(k)) != str(v)}
        if diff:
            api.call("PUT", f"{base}/options", **diff)
            rep.writes += 1
            rep.changed.append(f"{base}/options")
    return rep
