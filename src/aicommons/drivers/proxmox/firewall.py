"""Apply `aicommons.render.firewall.FirewallPlan` through the PVE API, changing only what differs.

Everything is the containers' own (ipsets, rules, options): nothing on the datacenter, whose
objects need `Sys.Modify` on `/` (see render/firewall.py). Read each object first and write only
the difference, so a second run makes no writing call. Rule lists are edited, not
rewritten: a rule that changed is updated in place (PUT …/{pos}), a rule that is gone is deleted,
a new one is created and moved to its place. PVE creates every rule at the TOP of the list,
whatever `pos` says (pve-firewall API2/Firewall/Rules.pm `create_rule`: `unshift @$rules`), and
`moveto` puts a rule just before the one at that index (`update_rule`); the edit below relies on
exactly that. IPSet entries are compared as PVE stores them (API2/Firewall/IPSet.pm `create_ip`:
host bits cleared, /32 dropped). `dry_run=True` only reads and reports what would change.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
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
    a, b = [_norm(r) for r in have], [_norm(r) for r in want]
    if a == b:
        return
    # Bottom-up, so the positions of the part above stay valid while the part below is edited.
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in reversed(ops):
        if tag == "equal":
            continue
        both = min(i2 - i1, j2 - j1)
        for k in range(both):  # changed in place: only these rules are touched
            rule = want[j1 + k]
            gone = [key for key in RULE_KEYS if key in have[i1 + k] and key not in rule]
            rep.write(api, "PUT", f"{path}/{i1 + k}", **rule, delete=",".join(gone) or None)
        for pos in range(i2 - 1, i1 + both - 1, -1):  # surplus: delete from the bottom
            rep.write(api, "DELETE", f"{path}/{pos}")
        at = i1 + both
        for k in range(j2 - 1, j1 + both - 1, -1):  # new: created at the top, then moved to `at`
            rep.write(api, "POST", path, **want[k])
            if at:
                rep.write(api, "PUT", f"{path}/0", moveto=at + 1)
    rep.changed.append(path)


def stored_cidr(cidr: str) -> str:
    """An ipset entry as PVE stores it: host bits cleared, a single-address prefix dropped."""
    if "/" in cidr:
        net = ipaddress.ip_network(cidr, strict=False)
        cidr = f"{net.network_address}/{net.prefixlen}"
        cidr = re.sub(r"/128$" if net.version == 6 else r"/32$", "", cidr)
    return cidr


def _sync_ipset(api: PveApi, base: str, s, existing: set[str], rep: FirewallReport) -> None:
    before = rep.writes
    if s.name not in existing:
        rep.write(api, "POST", base, name=s.name, comment=s.comment or None)
        have: dict[str, bool] = {}
    else:
        have = {e["cidr"]: bool(e.get("nomatch")) for e in api.get(f"{base}/{s.name}")}
    want = {stored_cidr(c): False for c in s.cidrs} | {stored_cidr(c): True for c in s.nomatch}
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
    for c in plan.containers:
        node = node_of(c.ctid)
        if node is None:
            continue
        base = f"nodes/{node}/lxc/{c.ctid}/firewall"
        # ipsets first: PVE refuses a rule naming an ipset that does not exist (`verify_rule`)
        existing = {d["name"] for d in api.get(f"{base}/ipset")} if c.ipsets else set()
        for s in c.ipsets:
            _sync_ipset(api, f"{base}/ipset", s, existing, rep)
        _sync_rules(api, f"{base}/rules", [r.to_api() for r in c.rules], rep)
        have = api.get(f"{base}/options")
        diff = {k: v for k, v in c.options.items() if str(have.get(k)) != str(v)}
        if diff:
            rep.write(api, "PUT", f"{base}/options", **diff)
            rep.changed.append(f"{base}/options")
    return rep


def object_names(paths: list[str]) -> list[str]:
    """API paths of changed objects as the engine's names: `container.N`."""
    out: list[str] = []
    for p in paths:
        parts = p.strip("/").split("/")
        if parts[0] == "nodes" and parts[2] == "lxc":
            name = f"container.{parts[3]}"
        else:
            name = p
        if name not in out:
            out.append(name)
    return out
