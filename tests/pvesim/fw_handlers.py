"""Simulated firewall endpoints: cluster security groups and ipsets, per-CT rules, ipsets, options."""

from __future__ import annotations

import hashlib
import ipaddress
import re

from tests.pvesim.handlers import FW_CT, HANDLERS, route
from tests.pvesim.state import PveError

# ---- firewall -------------------------------------------------------------------------------
RULE_KEYS = ("type", "action", "source", "dest", "dport", "sport", "proto", "macro", "comment", "iface",
             "enable", "log", "icmp-type")


def _rules(ctx, scope: str) -> list[dict]:
    if scope == "group":
        if ctx.p["group"] not in ctx.cl.fw_groups:
            raise PveError(500, f"no such security group '{ctx.p['group']}'")
        return ctx.cl.fw_groups[ctx.p["group"]]
    ctx.ct()
    return ctx.cl.fw_rules.setdefault(int(ctx.p["vmid"]), [])


def _digest(obj) -> str:
    return hashlib.sha1(repr(obj).encode()).hexdigest()


def _digest_of(rules) -> str:
    # Firewall.pm `copy_list_with_digest`: one SHA-1 over every rule's sorted key: value lines.
    h = hashlib.sha1()
    for r in rules:
        for k in sorted(r):
            h.update(f"{k}:{r[k]}\n".encode())
    return h.hexdigest()


def _rule_list(rules):
    d = _digest_of(rules)
    return [{**r, "pos": i, "digest": d} for i, r in enumerate(rules)]


def _copy_rule_data(rule: dict, p: dict) -> None:
    """pve-firewall src/PVE/Firewall.pm `copy_rule_data`: given keys are set, '' or '-' deletes."""
    for k in RULE_KEYS:
        if k in p:
            if p[k] in ("", "-"):
                rule.pop(k, None)
            else:
                rule[k] = int(p[k]) if k in ("enable", "log") and str(p[k]).isdigit() else p[k]


IPSET_REF = re.compile(r"\+(guest/|dc/|sdn/)?([A-Za-z][A-Za-z0-9_-]+)")


def _verify(ctx, rule: dict, scope: str) -> None:
    """pve-firewall src/PVE/Firewall.pm `verify_rule`: a `+name` source/dest must name an ipset of
    the datacenter or of the rule's own guest (a security group's rules have no guest config),
    else 400 "no such ipset"; `type: group` is refused inside a group; the address family of IP
    sources/destinations is recorded (returned on read)."""
    if rule.get("type") == "group" and scope == "group":
        raise PveError(400, "Parameter verification failed.", {"type": "security groups not allowed"})
    for k in ("source", "dest"):
        v = rule.get(k, "")
        if v.startswith("+"):
            m = IPSET_REF.fullmatch(v)
            if not m:
                raise PveError(400, "Parameter verification failed.", {k: f"invalid ipset name '{v}'"})
            guest = (ctx.p["vmid"], m.group(2)) in ctx.cl.fw_ipsets if scope == "ct" else False
            if not guest and ("cluster", m.group(2)) not in ctx.cl.fw_ipsets:
                raise PveError(400, "Parameter verification failed.", {k: f"no such ipset '{m.group(2)}'"})
        elif v:
            rule["ipversion"] = ipaddress.ip_network(v.split(",")[0], strict=False).version


def _rule_add(ctx, rules, scope):
    """pve-firewall src/PVE/API2/Firewall/Rules.pm `create_rule`: the new rule goes to the TOP of
    the list (`unshift @$rules, $rule`) - `pos` is accepted by the schema but ignored - and a rule
    created without `enable` is disabled (`$rule->{enable} = 0 if !defined($param->{enable})`)."""
    rule: dict = {}
    _copy_rule_data(rule, ctx.p)
    _verify(ctx, rule, scope)
    if "enable" not in ctx.p:
        rule["enable"] = 0
    rules.insert(0, rule)


def _rule_at(ctx, rules) -> int:
    pos = int(ctx.p["pos"])
    if pos >= len(rules):
        raise PveError(500, f"no rule at position {pos}")
    return pos


def _rule_put(ctx, rules, scope):
    """Rules.pm `update_rule`: with `moveto` the rule is only moved - it lands just before the rule
    that was at index `moveto` (at the end when moveto >= the list's length); otherwise the given
    keys are copied (`copy_rule_data`) and `delete` removes keys. `digest` guards the whole list."""
    if ctx.p.get("digest") and ctx.p["digest"] != _digest_of(rules):
        raise PveError(500, "detected modified configuration - file changed by other user? Try again.")
    pos = _rule_at(ctx, rules)
    rule = rules[pos]
    moveto = ctx.int("moveto")
    if moveto is not None and moveto != pos:
        new = []
        for i, r in enumerate(rules):
            if i == pos:
                continue
            if i == moveto:
                new.append(rule)
            new.append(r)
        if moveto >= len(rules):
            new.append(rule)
        rules[:] = new
        return
    _copy_rule_data(rule, ctx.p)
    for k in re.split(r"[,;\s]+", ctx.p.get("delete", "")):
        if k:
            rule.pop(k, None)
    rule.pop("ipversion", None)
    _verify(ctx, rule, scope)


def _rule_del(ctx, rules):
    rules.pop(_rule_at(ctx, rules))


for _scope, _base in (("group", "/cluster/firewall/groups/{group}"), ("ct", FW_CT + "/rules")):
    HANDLERS[("GET", _base)] = (lambda s: lambda ctx: _rule_list(_rules(ctx, s)))(_scope)
    HANDLERS[("POST", _base)] = (lambda s: lambda ctx: _rule_add(ctx, _rules(ctx, s), s))(_scope)
    HANDLERS[("PUT", _base + "/{pos}")] = (lambda s: lambda ctx: _rule_put(ctx, _rules(ctx, s), s))(_scope)
    HANDLERS[("DELETE", _base + "/{pos}")] = (lambda s: lambda ctx: _rule_del(ctx, _rules(ctx, s)))(_scope)
    HANDLERS[("GET", _base + "/{pos}")] = (lambda s: lambda ctx: _rule_list(_rules(ctx, s))[_rule_at(ctx, _rules(ctx, s))])(_scope)


@route("GET", "/cluster/firewall/groups")
def fw_groups(ctx):
    return [{"group": g, "digest": _digest(r)} for g, r in sorted(ctx.cl.fw_groups.items())]


@route("POST", "/cluster/firewall/groups")
def fw_group_create(ctx):
    if ctx.p["group"] in ctx.cl.fw_groups:
        raise PveError(500, f"security group '{ctx.p['group']}' already exists")
    ctx.cl.fw_groups[ctx.p["group"]] = []


@route("DELETE", "/cluster/firewall/groups/{group}")
def fw_group_delete(ctx):
    if ctx.cl.fw_groups.get(ctx.p["group"]):
        raise PveError(500, "Security group is not empty")
    ctx.cl.fw_groups.pop(ctx.p["group"], None)


def _ipset_scope(ctx) -> str:
    if "vmid" in ctx.p:
        ctx.ct()
        return ctx.p["vmid"]
    return "cluster"


def _ipset(ctx) -> list[dict]:
    key = (_ipset_scope(ctx), ctx.p["name"])
    if key not in ctx.cl.fw_ipsets:
        raise PveError(500, f"no such IPSet '{ctx.p['name']}'")
    return ctx.cl.fw_ipsets[key]


def _ipset_list(ctx):
    scope = _ipset_scope(ctx)
    return [{"name": n, "digest": _digest(e)} for (s, n), e in sorted(ctx.cl.fw_ipsets.items()) if s == scope]


def _ipset_create(ctx):
    key = (_ipset_scope(ctx), ctx.p["name"])
    if key in ctx.cl.fw_ipsets:
        raise PveError(500, f"IPSet '{ctx.p['name']}' already exists")
    ctx.cl.fw_ipsets[key] = []


def normalize_cidr(cidr: str) -> str:
    """pve-firewall src/PVE/API2/Firewall/IPSet.pm `create_ip`: `clean_cidr` clears host bits
    (10.0.5.7/24 -> 10.0.5.0/24, IPv6 compressed), then `parse_ip_or_cidr` drops a /32 (/128)."""
    if "/" in cidr:
        net = ipaddress.ip_network(cidr, strict=False)
        cidr = f"{net.network_address}/{net.prefixlen}"
    return re.sub(r"/32$" if ":" not in cidr else r"/128$", "", cidr)


def _ipset_add(ctx):
    entries = _ipset(ctx)
    cidr = normalize_cidr(ctx.p["cidr"])
    if any(e["cidr"] == cidr for e in entries):
        raise PveError(400, "Parameter verification failed.", {"cidr": f"address '{cidr}' already exists"})
    if re.search(r"/0+$", cidr):
        raise PveError(400, "Parameter verification failed.", {"cidr": "a zero prefix is not allowed in ipset entries"})
    entry = {"cidr": cidr, **({"comment": ctx.p["comment"]} if "comment" in ctx.p else {})}
    if ctx.bool("nomatch"):
        entry["nomatch"] = 1
    entries.append(entry)


def _ipset_delete(ctx):
    if _ipset(ctx) and not ctx.bool("force"):
        raise PveError(500, "IPSet is not empty")
    ctx.cl.fw_ipsets.pop((_ipset_scope(ctx), ctx.p["name"]))


def _ipset_entry_delete(ctx):
    entries = _ipset(ctx)
    entries[:] = [e for e in entries if e["cidr"] != ctx.p["cidr"]]


for _base in ("/cluster/firewall/ipset", FW_CT + "/ipset"):
    HANDLERS[("GET", _base)] = _ipset_list
    HANDLERS[("POST", _base)] = _ipset_create
    HANDLERS[("GET", _base + "/{name}")] = lambda ctx: [dict(e) for e in _ipset(ctx)]
    HANDLERS[("POST", _base + "/{name}")] = _ipset_add
    HANDLERS[("DELETE", _base + "/{name}")] = _ipset_delete
    HANDLERS[("DELETE", _base + "/{name}/{cidr}")] = _ipset_entry_delete


def _opt_scope(ctx) -> str:
    if "vmid" in ctx.p:
        ctx.ct()
        return ctx.p["vmid"]
    return "cluster"


def _opt_get(ctx):
    opts = dict(ctx.cl.fw_options.get(_opt_scope(ctx), {}))
    return {**opts, "digest": _digest(sorted(opts.items()))}


def _opt_put(ctx):
    opts = ctx.cl.fw_options.setdefault(_opt_scope(ctx), {})
    for k in re.split(r"[,;\s]+", ctx.p.get("delete", "")):
        opts.pop(k, None)
    opts.update({k: v for k, v in ctx.p.items() if k not in ("node", "vmid", "digest", "delete")})


for _base in ("/cluster/firewall/options", FW_CT + "/options"):
    HANDLERS[("GET", _base)] = _opt_get
    HANDLERS[("PUT", _base)] = _opt_put

