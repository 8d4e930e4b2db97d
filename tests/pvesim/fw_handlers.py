"""Simulated firewall endpoints: cluster security groups and ipsets, per-CT rules, ipsets, options."""

from __future__ import annotations

import hashlib
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


def _rule_list(rules):
    return [{**r, "pos": i, "digest": _digest(rules)} for i, r in enumerate(rules)]


def _rule_add(ctx, rules):
    rule = {k: ctx.p[k] for k in RULE_KEYS if k in ctx.p}
    if "enable" in rule:
        rule["enable"] = int(rule["enable"])
    pos = ctx.int("pos", 0)
    rules.insert(min(pos, len(rules)), rule)


def _rule_at(ctx, rules) -> int:
    pos = int(ctx.p["pos"])
    if pos >= len(rules):
        raise PveError(500, f"no rule at position {pos}")
    return pos


def _rule_put(ctx, rules):
    pos = _rule_at(ctx, rules)
    for k in re.split(r"[,;\s]+", ctx.p.get("delete", "")):
        rules[pos].pop(k, None)
    rules[pos].update({k: ctx.p[k] for k in RULE_KEYS if k in ctx.p})
    if "moveto" in ctx.p:
        rules.insert(int(ctx.p["moveto"]), rules.pop(pos))


def _rule_del(ctx, rules):
    rules.pop(_rule_at(ctx, rules))


for _scope, _base in (("group", "/cluster/firewall/groups/{group}"), ("ct", FW_CT + "/rules")):
    HANDLERS[("GET", _base)] = (lambda s: lambda ctx: _rule_list(_rules(ctx, s)))(_scope)
    HANDLERS[("POST", _base)] = (lambda s: lambda ctx: _rule_add(ctx, _rules(ctx, s)))(_scope)
    HANDLERS[("PUT", _base + "/{pos}")] = (lambda s: lambda ctx: _rule_put(ctx, _rules(ctx, s)))(_scope)
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


def _ipset_add(ctx):
    entries = _ipset(ctx)
    if any(e["cidr"] == ctx.p["cidr"] for e in entries):
        raise PveError(500, f"entry '{ctx.p['cidr']}' already exists")
    entry = {"cidr": ctx.p["cidr"], **({"comment": ctx.p["comment"]} if "comment" in ctx.p else {})}
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

