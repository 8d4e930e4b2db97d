"""Proxmox VE firewall rules as pure data: per-container rules and the ipsets they reference.

What the rules guarantee (every container NIC carries `firewall=1`, policy_in DROP):
- only Traefik reaches user app ports; users cannot reach each other (no IN rule admits them,
  and an OUT rule drops user -> user traffic before it leaves);
- user containers reach shared services only on the ports their apps use (postgres 5432, ...);
  where the model gateway runs, that is the gateway (4000) and never Ollama: their apps are wired
  to the gateway, which alone reaches Ollama (each call attributed and budgeted);
- shared services reach each other (Langfuse -> PostgreSQL, the gateway -> Ollama) and Prometheus
  scrapes everything;
- operators (resolved.operator_sources: operator_allow minus the user ranges) reach shared containers.
Nothing else reaches the site's containers: the only way in from outside is through Traefik.

Everything lives on the containers themselves (their own rules and ipsets, referenced as
`+guest/<name>`), nothing on the datacenter: cluster ipsets and security groups need `Sys.Modify`
on `/` (pve-firewall `rules_modify_permissions`: 'cluster'/'group' -> `/`, 'ct' ->
`VM.Config.Network` on `/vms/{vmid}`), and that privilege would also let the site's token switch
the datacenter firewall off and create privileged containers (pve-container `create_vm`).

The Proxmox driver applies `FirewallPlan` through the API (`api_calls()`); `container_fw(ctid)`
gives the same rules as an /etc/pve/firewall/<ctid>.fw file for applying by hand.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from aicommons.catalog import load_catalog
from aicommons.plan.deployed import need_service
from aicommons.plan.model import ResolvedSite
from aicommons.plan.names import REDIS_USER_PORT_BASE

Action = Literal["ACCEPT", "DROP", "REJECT"]
Direction = Literal["in", "out"]

PROXY_SET = "aic-proxy"
USERS_SET = "aic-users"
SHARED_SET = "aic-shared"
OPERATORS_SET = "aic-operators"
MONITOR_SET = "aic-monitor"
NODE_EXPORTER = 9100
# Ports a service keeps to itself and the operators (admin APIs, cluster RPC, consoles).
PRIVATE_PORTS = {"admin", "rpc", "console", "edge", "ssh", "worker", "node-exporter"}
# What a per-user app's `needs` entry maps to (object_storage is the site's chosen store).
@dataclass(frozen=True, slots=True)
class Rule:
    """One PVE firewall rule of a container."""

    type: Direction
    action: str  # ACCEPT / DROP / REJECT, or the group name when type == "group"
    source: str | None = None  # IP, CIDR or `+ipset`
    dest: str | None = None
    proto: str | None = None
    dport: str | None = None  # "5432" or "80,443" (PVE's dport list syntax)
    comment: str = ""

    def to_api(self) -> dict[str, str | int]:
        """Body of POST …/firewall/rules or /cluster/firewall/groups/{group}."""
        body: dict[str, str | int] = {"type": self.type, "action": self.action, "enable": 1}
        for key in ("source", "dest", "proto", "dport", "comment"):
            val = getattr(self, key)
            if val:
                body[key] = val
        return body

    def to_fw_line(self) -> str:
        """The same rule as a line of a .fw file."""
        out = f"{self.type.upper()} {self.action}"
        for flag, val in (("-source", self.source), ("-dest", self.dest), ("-p", self.proto), ("-dport", self.dport)):
            if val:
                out += f" {flag} {val}"
        return out + (f" # {self.comment}" if self.comment else "")


@dataclass(frozen=True, slots=True)
class IpSet:
    name: str
    cidrs: tuple[str, ...]
    nomatch: tuple[str, ...] = ()  # entries excluded from the set (`!cidr`)
    comment: str = ""


@dataclass(frozen=True, slots=True)
class ContainerFirewall:
    ctid: int
    node: str | None
    role: str
    options: dict[str, str | int] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()  # first match wins
    ipsets: tuple[IpSet, ...] = ()  # the container's own ipsets, exactly those its rules reference


@dataclass(frozen=True, slots=True)
class FirewallPlan:
    containers: tuple[ContainerFirewall, ...]

    def container(self, ctid: int) -> ContainerFirewall:
        for c in self.containers:
            if c.ctid == ctid:
                return c
        raise KeyError(ctid)

    def container_fw(self, ctid: int) -> str:
        """/etc/pve/firewall/<ctid>.fw for one container."""
        c = self.container(ctid)
        out = ["[OPTIONS]"] + [f"{k}: {v}" for k, v in c.options.items()] + [""]
        for s in c.ipsets:
            out.append(f"[IPSET {s.name}]" + (f" # {s.comment}" if s.comment else ""))
            out += list(s.cidrs) + [f"!{x}" for x in s.nomatch] + [""]
        out += ["[RULES]"] + [r.to_fw_line() for r in c.rules]
        return "\n".join(out) + "\n"

    def api_calls(self) -> list[tuple[str, str, dict]]:
        """(method, path, body) in apply order; node paths use `{node}` when a container has none."""
        calls: list[tuple[str, str, dict]] = []
        for c in self.containers:
            base = f"/nodes/{c.node or '{node}'}/lxc/{c.ctid}/firewall"
            for s in c.ipsets:  # before the rules: PVE refuses a rule naming an ipset that does not exist
                calls.append(("POST", f"{base}/ipset", {"name": s.name, "comment": s.comment}))
                calls += [("POST", f"{base}/ipset/{s.name}", {"cidr": x}) for x in s.cidrs]
                calls += [("POST", f"{base}/ipset/{s.name}", {"cidr": x, "nomatch": 1}) for x in s.nomatch]
            calls += [("POST", f"{base}/rules", r.to_api()) for r in reversed(c.rules)]
            calls.append(("PUT", f"{base}/options", dict(c.options)))
        return calls


def _cidrs_of_range(first: str, last: str) -> list[str]:
    nets = ipaddress.summarize_address_range(ipaddress.IPv4Address(first), ipaddress.IPv4Address(last))
    return [str(n) for n in nets]


def _user_facing_ports(resolved: ResolvedSite) -> dict[str, list[int]]:
    """Shared service -> TCP ports user containers may open (only services their apps need)."""
    cat = load_catalog()
    wanted: set[str] = set()
    for a in resolved.site.user_template.apps:
        for need in cat.apps[a].needs if a in cat.apps else ():
            wanted.add(need_service(resolved.site, need))
    if resolved.models_via_gateway:  # the apps are given the gateway, never Ollama (render/compose.py)
        wanted.add("gateway")
        wanted.discard("ollama")
    out: dict[str, list[int]] = {}
    for n in sorted(wanted):
        if n in resolved.endpoints and n in cat.services and not resolved.endpoints[n].external:
            out[n] = [p.port for p in cat.services[n].ports if p.name not in PRIVATE_PORTS and p.protocol != "udp"]
    return out


def exact_cidrs(ips) -> tuple[str, ...]:
    """The same addresses in fewer entries: consecutive aligned runs merge into one CIDR (no address
    is added), so each container's copy of a set costs fewer writes. Single addresses stay bare."""
    nets = ipaddress.collapse_addresses(ipaddress.IPv4Network(ip) for ip in ips)  # the site's network is IPv4
    return tuple(str(n.network_address) if n.num_addresses == 1 else str(n) for n in nets)


def ref(ipset: str) -> str:
    """A rule's reference to the container's own ipset (pve-firewall `ipt_gen_src_or_dst_match`:
    `+guest/<name>` looks only in the guest's config, never at a datacenter set of that name)."""
    return f"+guest/{ipset}"


def firewall_plan(resolved: ResolvedSite) -> FirewallPlan:
    """Every firewall object the site needs, as data (pure)."""
    site = resolved.site
    net = site.network
    users = [c for c in resolved.containers if c.role == "user"]
    shared = [c for c in resolved.containers if c.role == "shared"]
    user_ranges = [cidr for r in net.user_ranges for cidr in _cidrs_of_range(*[p.strip() for p in r.split("-")])]
    monitor = [c.ip for c in shared if c.name == "prometheus"]
    sets = {s.name: s for s in (
        IpSet(PROXY_SET, (resolved.proxy_source,), comment="where Traefik connects from: the only way in"),
        IpSet(USERS_SET, exact_cidrs(c.ip for c in users), comment="user containers"),
        IpSet(SHARED_SET, exact_cidrs(c.ip for c in shared), comment="shared-service containers"),
        # operator_allow minus every user range, the same list Traefik and pg_hba use (plan/access.py)
        IpSet(OPERATORS_SET, resolved.operator_sources, comment="operator addresses, never a user container"),
        IpSet(MONITOR_SET, tuple(monitor), comment="Prometheus"),
    )}
    cat = load_catalog()
    app_ports = sorted({cat.apps[a].port for a in site.user_template.apps if a in cat.apps})
    facing = _user_facing_ports(resolved)
    user_out = [
        Rule("out", "ACCEPT", dest=c.ip, proto="tcp", dport=dport, comment=f"to {c.hostname}")
        for c in shared if facing.get(c.name) for dport in port_lists(facing[c.name])
    ]
    own_redis = [t for t in resolved.tenants if t.redis_port is not None]
    user_out += [Rule("out", "ACCEPT", dest=c.ip, proto="tcp", dport=f"{REDIS_USER_PORT_BASE}:65535",
                      comment="to own Redis of each user (let in there per user)")
                 for c in shared if c.name == "redis" and own_redis and "redis" in facing]
    site_nets = [str(net.subnet)] + [c for c in user_ranges if not ipaddress.IPv4Network(c).subnet_of(net.subnet)]
    user_out += [Rule("out", "DROP", dest=n, comment="no other container of the site") for n in site_nets]
    # A user container names its two single sources directly rather than in ipsets of its own: the
    # same rules, and four writes fewer per user container on the first apply.
    user_rules = (
        *(Rule("in", "ACCEPT", source=resolved.proxy_source, proto="tcp", dport=dport,
               comment="Traefik to the user's apps") for dport in port_lists(app_ports)),
        *(Rule("in", "ACCEPT", source=ip, proto="tcp", dport=str(NODE_EXPORTER),
               comment="Prometheus scrapes node exporter") for ip in monitor),
        *user_out,
    )
    routed: dict[int, set[int]] = {}
    for r in resolved.routes:
        if r.owner is None:
            for url in r.urls:
                host_port = url.split("://", 1)[1]
                ip, port = host_port.rsplit(":", 1)
                routed.setdefault(_ctid_by_ip(resolved, ip), set()).add(int(port))
    options: dict[str, str | int] = {"enable": 1, "policy_in": "DROP", "policy_out": "ACCEPT"}

    def used(rules) -> tuple[IpSet, ...]:
        names = {(x or "").removeprefix("+guest/") for r in rules for x in (r.source, r.dest)}
        return tuple(s for n, s in sets.items() if n in names)

    user_sets = used(user_rules)
    fws = [ContainerFirewall(c.ctid, c.node, "user", dict(options), user_rules, user_sets) for c in users]
    for c in shared:
        rules = [
            # Prometheus is a shared container, so this also lets it scrape every shared service.
            Rule("in", "ACCEPT", source=ref(SHARED_SET), comment="shared services use each other"),
            Rule("in", "ACCEPT", source=ref(OPERATORS_SET), comment="operators and the control plane"),
        ]
        if routed.get(c.ctid):
            rules += [Rule("in", "ACCEPT", source=ref(PROXY_SET), proto="tcp", dport=dport, comment="Traefik route")
                      for dport in port_lists(sorted(routed[c.ctid]))]
        if facing.get(c.name):
            rules += [Rule("in", "ACCEPT", source=ref(USERS_SET), proto="tcp", dport=dport, comment="user apps")
                      for dport in port_lists(facing[c.name])]
        if c.name == "redis" and facing.get(c.name):  # each user's own server: from that user only
            rules += [Rule("in", "ACCEPT", source=t.ip, proto="tcp", dport=str(t.redis_port),
                           comment=f"own Redis of {t.user}") for t in own_redis]
        fws.append(ContainerFirewall(c.ctid, c.node, "shared", dict(options), tuple(rules), used(rules)))
    return FirewallPlan(tuple(fws))


MAX_PORT_LIST = 15  # pve-firewall parse_port_name_number_or_range: > 15 numbers dies (iptables multiport)


def port_lists(ports: list[int]) -> list[str]:
    """`ports` as PVE dport lists of at most 15 numbers each: one rule per list."""
    return [",".join(map(str, ports[i:i + MAX_PORT_LIST])) for i in range(0, len(ports), MAX_PORT_LIST)]


def _ctid_by_ip(resolved: ResolvedSite, ip: str) -> int:
    for c in resolved.containers:
        if c.ip == ip:
            return c.ctid
    return -1
