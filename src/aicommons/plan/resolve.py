"""Resolve a Site into containers, routes and tenant slices, collecting every problem on the way.

Allocation is deterministic and explainable:
- shared services take their catalog address (the reference architecture's where it fixes one) unless overridden;
  extra instances of a scalable service take the scale-out pool 108-119, then any free address;
- users keep, in this order: a slot already held (from state: `held`), a fixed `slot:` from the
  file, else the lowest free address of the user ranges in file order;
- CTID and Traefik file name follow from the address (`names.ctid_for`, `names.traefik_file`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from aicommons.catalog import Catalog, load_catalog
from aicommons.errors import Problem, SiteInvalid
from aicommons.plan import certificates as certs_plan
from aicommons.plan import deployed, names
from aicommons.plan import models as model_plan
from aicommons.plan.access import operator_sources, proxy_source
from aicommons.plan.model import Certificate, Container, Endpoint, ResolvedSite, Route, Tenant, Totals, own_redis_mb
from aicommons.spec.identity import email_key
from aicommons.spec.load import LineIndex, format_path
from aicommons.spec.models import PROVIDER_REFUSED, Site, parse_range

PROVIDERS = ("lemonldap", "authentik")  # identity.provider values, each its catalog service

SCALE_POOL = range(108, 120)
# Shared services whose tenant slices the control plane makes with an admin login
# (tenancy/registry.py admin_credentials): adopted as `external:`, they need that login in site.yaml.
EXTERNAL_ADMIN = ("postgres", "redis", "qdrant", "garage", "minio")
IP = ipaddress.IPv4Address


@dataclass
class _Ctx:
    site: Site
    catalog: Catalog
    problems: list[tuple[tuple[Any, ...], str, str]] = field(default_factory=list)
    taken: dict[IP, str] = field(default_factory=dict)  # address -> who holds it

    @cached_property
    def via_gateway(self) -> bool:
        return models_via_gateway(self.site, self.catalog)

    def problem(self, loc: tuple[Any, ...], message: str, fix: str) -> None:
        self.problems.append((loc, message, fix))

    def take(self, ip: IP, who: str, loc: tuple[Any, ...]) -> bool:
        if ip in self.taken:
            self.problem(loc, f"address {ip} is already used by {self.taken[ip]}",
                         f"give {who} a free address, or remove the clash")
            return False
        self.taken[ip] = who
        return True


def models_via_gateway(site: Site, catalog: Catalog) -> bool:
    """The model gateway runs here: every person has a key and every app is wired to it, none to
    a model server (render/compose.py `_Wiring.gateway`); Ollama's own route is then operators'
    and the firewall admits users to the gateway only. The one test of it."""
    return "gateway" in enabled_services(site, catalog) and "gateway" not in deployed.undeployed(site, catalog)


def _ip_range(text: str) -> list[IP]:
    a, b = parse_range(text)
    return [IP(i) for i in range(int(a), int(b) + 1)]


def enabled_services(site: Site, catalog: Catalog) -> list[str]:
    """Names of shared services the site enables, in catalog order (phase, then octet)."""
    names_ = [n for n, o in site.services.items() if o.enabled and n in catalog.services and n != "traefik"]
    return sorted(names_, key=lambda n: (catalog.services[n].phase, catalog.services[n].octet or 999, n))


def redis_instances(site: Site, catalog: Catalog) -> bool:
    """Does each user get a Redis server of its own? Only where aicommons runs Redis itself."""
    ov = site.services.get("redis")
    return (site.redis.isolation == "instance" and "redis" in enabled_services(site, catalog)
            and (ov is None or ov.external is None))


def _low_ctids(ctx: _Ctx, ips: list[IP]) -> str:
    """On Proxmox, the CTIDs of `ips` below PVE's minimum VMID of 100 ('' when none or not Proxmox)."""
    if ctx.site.driver.kind != "proxmox":
        return ""
    low = [c for c in (names.ctid_for(ip, ctx.site.network.subnet) for ip in ips) if c < names.MIN_CTID]
    return "" if not low else (f"{low[0]}" if len(low) == 1 else f"{low[0]}-{low[-1]}")


def _check_network(ctx: _Ctx) -> tuple[list[IP], list[IP]]:
    net = ctx.site.network
    loc = ("network",)
    if net.gateway not in net.subnet:
        ctx.problem(loc + ("gateway",), f"gateway {net.gateway} is outside subnet {net.subnet}",
                    "pick a gateway inside the subnet, e.g. its .1")
    if net.subnet.prefixlen < 16:
        ctx.problem(loc + ("subnet",), f"subnet {net.subnet} is wider than /16", "use a /24 such as 10.0.5.0/24")
    shared = _ip_range(net.shared_range)
    if any(ip not in net.subnet for ip in (shared[0], shared[-1])):
        ctx.problem(loc + ("shared_range",), f"{net.shared_range} is not inside {net.subnet}",
                    "keep shared services in the site's subnet, e.g. 10.0.5.100-10.0.5.199")
        shared = [ip for ip in shared if ip in net.subnet]
    site16 = ipaddress.IPv4Network(f"{net.subnet.network_address}/16", strict=False)
    users: list[IP] = []
    seen: set[IP] = set(shared)
    for i, text in enumerate(net.user_ranges):
        r = _ip_range(text)
        if r[0] not in site16 or r[-1] not in site16:
            ctx.problem(loc + ("user_ranges", i), f"{text} is outside the site's /16 ({site16})",
                        f"use ranges inside {site16}, e.g. 10.0.6.200-10.0.6.249")
            continue
        if IP(r[0]).packed[2] != IP(r[-1]).packed[2]:
            ctx.problem(loc + ("user_ranges", i), f"{text} crosses a /24 boundary",
                        "split it into one range per /24")
            continue
        reserved = {0, 255} | ({1} if r[0] not in net.subnet else set())
        if r[0].packed[3] in reserved or r[-1].packed[3] == 255:
            ctx.problem(loc + ("user_ranges", i), f"{text} includes a network, gateway or broadcast address",
                        "start at .2 or above and end at .254 or below")
            continue
        clash = [ip for ip in r if ip in seen]
        if clash:
            ctx.problem(loc + ("user_ranges", i), f"{text} overlaps the shared range or another user range at {clash[0]}",
                        "make the ranges disjoint")
            continue
        if net.gateway in r:
            ctx.problem(loc + ("user_ranges", i), f"{text} contains the gateway {net.gateway}", "exclude the gateway")
            continue
        if low := _low_ctids(ctx, r):
            ctx.problem(loc + ("user_ranges", i), f"{text} gives containers CTIDs {low}: below Proxmox VE's "
                        "minimum VMID 100 (pve-vmid), so every clone would fail",
                        "use user addresses whose last octet is 100 or more (the reference architecture's "
                        "10.0.5.200-10.0.5.249), or a range in another /24 (CTID = third octet * 1000 + last)")
            continue
        seen.update(r)
        users.extend(r)
    if low := _low_ctids(ctx, shared):
        ctx.problem(loc + ("shared_range",), f"{net.shared_range} gives containers CTIDs {low}: below Proxmox VE's "
                    "minimum VMID 100 (pve-vmid)", "keep the shared range at .100 or above (10.0.5.100-10.0.5.199)")
    if net.traefik.address in seen:
        ctx.problem(loc + ("traefik", "address"), f"Traefik's address {net.traefik.address} lies in a container range",
                    "move Traefik out of the shared and user ranges (the reference architecture uses 10.0.4.10)")
    return shared, users


def _allocate_shared(ctx: _Ctx, shared_range: list[IP]) -> tuple[list[Container], dict[str, Endpoint]]:
    site, cat = ctx.site, ctx.catalog
    net = site.network
    containers: list[Container] = []
    endpoints: dict[str, Endpoint] = {}
    in_range = set(shared_range)
    pending_extra: list[tuple[str, int]] = []
    placed: dict[str, list[IP]] = {}
    svc_names = enabled_services(site, cat)
    # Catalog defaults first, overrides second: a clash is then reported where the edit was made
    # (the reference architecture's second Ollama at .101 is flagged on ollama, not on Qdrant).
    overridden = [n for n in svc_names if site.services[n].address or site.services[n].addresses]
    order = [n for n in svc_names if n not in overridden] + overridden

    for n in order:
        svc, ov = cat.services[n], site.services[n]
        loc = ("services", n)
        if ov.external is not None:
            if n in EXTERNAL_ADMIN and ov.external.admin_password is None:
                ctx.problem(loc + ("external", "admin_password"),
                            f"an external {n} needs an admin login: aicommons creates each user's slice with it",
                            "set it (a literal, env:VAR or file:PATH), or let aicommons run the server")
            ports = {p.name: p.port for p in svc.ports}
            if svc.ports:  # the adopted server's port replaces the service's main one
                ports[svc.ports[0].name] = ov.external.port
            endpoints[n] = Endpoint(n, ov.external.host, ports, external=True)
            continue
        wanted: list[IP] = []
        if ov.addresses:
            wanted = list(ov.addresses)
            if len(wanted) != ov.instances and ov.instances != 1:
                ctx.problem(loc + ("addresses",), f"{len(wanted)} addresses for {ov.instances} instances",
                            "list one address per instance, or drop `addresses`")
        elif ov.address is not None:
            wanted = [ov.address]
        elif svc.octet is not None:
            wanted = [IP(int(net.subnet.network_address) + svc.octet)]
        if ov.instances > 1 and not svc.scalable:
            ctx.problem(loc + ("instances",), f"{n} runs as a single instance (its state cannot be shared)",
                        "set instances: 1")
        ok: list[IP] = []
        for j, ip in enumerate(wanted):
            sub = loc + (("addresses", j) if ov.addresses else ("address",))
            if ip not in in_range:
                ctx.problem(sub, f"{ip} is outside the shared range {net.shared_range}",
                            "pick an address in the shared range")
                continue
            if ctx.take(ip, f"service {n}", sub):
                ok.append(ip)
        placed[n] = ok
        missing = max(ov.instances, 1) - len(wanted)
        if not wanted:
            missing = max(ov.instances, 1)
        if missing > 0:
            pending_extra.append((n, missing))

    # Extra instances and services without a default address: scale pool first, then the range.
    pool = [IP(int(net.subnet.network_address) + o) for o in SCALE_POOL] + shared_range
    pool = [ip for ip in dict.fromkeys(pool) if ip in in_range]
    free = (ip for ip in pool if ip not in ctx.taken)
    for n, count in pending_extra:
        for _ in range(count):
            got = next(free, None)
            if got is None:
                ctx.problem(("network", "shared_range"), f"shared range {net.shared_range} is full (placing {n})",
                            "widen network.shared_range or disable services")
                break
            ctx.take(got, f"service {n}", ("services", n))
            placed[n].append(got)

    for n in svc_names:
        if n not in placed:
            continue
        svc, ov = cat.services[n], site.services[n]
        res = svc.resources
        r = ov.resources
        for k, ip in enumerate(placed[n], start=1):
            host = n if k == 1 else f"{n}-{k}"
            containers.append(
                Container(
                    ctid=names.ctid_for(ip, net.subnet), ip=str(ip), prefixlen=net.subnet.prefixlen,
                    gateway=str(net.gateway), hostname=host, role="shared", name=n,
                    services=(n,), phase=svc.phase,
                    memory_mb=(r.memory_mb if r and r.memory_mb else res.memory_mb),
                    cores=(r.cores if r and r.cores else res.cores),
                    disk_gb=(r.disk_gb if r and r.disk_gb else res.disk_gb),
                    traefik_file=names.traefik_file(ip, net.traefik.file_pattern),
                    node=ov.node or _pinned(site, n), instance=k, gpu=res.gpu,
                )
            )
        if placed[n]:
            endpoints[n] = Endpoint(n, str(placed[n][0]), {p.name: p.port for p in svc.ports})
    return containers, endpoints


def _pinned(site: Site, key: str) -> str | None:
    pinned = getattr(site.driver, "pinned", None) or {}
    return pinned.get(key)


def _check_services(ctx: _Ctx) -> None:
    site, cat = ctx.site, ctx.catalog
    for n, ov in site.services.items():
        loc = ("services", n)
        if n not in cat.services:
            close = sorted(s for s in cat.services if s[:3] == n[:3])
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            ctx.problem(loc, f"unknown service {n!r}{hint}", "use a name from `aicommons catalog`")
            continue
        svc = cat.services[n]
        if n == "traefik":
            continue
        if not ov.enabled:
            continue
        if svc.role == "object_storage" and n != site.object_storage:
            ctx.problem(loc, f"{n} is enabled but object_storage is {site.object_storage!r}",
                        f"set object_storage: {n}, or replace {n} with {site.object_storage}")
        for dep in svc.depends_on:
            dep_ov = site.services.get(dep)
            if dep_ov is None or not dep_ov.enabled:
                ctx.problem(loc, f"{n} depends on {dep}, which is not enabled",
                            f"enable {dep} (it may be `external:`), or disable {n}")
    provider = site.identity.provider
    for other in PROVIDERS:
        other_ov = site.services.get(other)
        if other != provider and other_ov is not None and other_ov.enabled and other_ov.external is None:
            ctx.problem(("services", other), f"{other} is enabled but the site's identity provider is {provider!r}",
                        f"remove {other} from services, or set identity.provider: {other}")
    enabled_storage = [n for n, ov in site.services.items()
                       if ov.enabled and n in cat.services and cat.services[n].role == "object_storage"]
    if len(enabled_storage) > 1:
        ctx.problem(("services",), f"more than one object store enabled: {', '.join(enabled_storage)}",
                    "enable only the one named by object_storage")


def _check_apps(ctx: _Ctx) -> list[str]:
    site, cat = ctx.site, ctx.catalog
    apps = []
    seen_ports: dict[int, str] = {}
    for i, a in enumerate(site.user_template.apps):
        loc = ("user_template", "apps", i)
        if a not in cat.apps:
            ctx.problem(loc, f"unknown app {a!r}", f"use one of: {', '.join(sorted(cat.apps))}")
            continue
        if a in apps:
            ctx.problem(loc, f"app {a!r} is listed twice", "list each app once")
            continue
        app = cat.apps[a]
        if app.port in seen_ports:
            ctx.problem(loc, f"{a} and {seen_ports[app.port]} both use port {app.port}", "remove one of them")
        seen_ports[app.port] = a
        for need in app.needs:
            target = site.object_storage if need == "object_storage" else need
            ov = site.services.get(target)
            if ov is None or not ov.enabled:
                if need in ("langfuse", "searxng", "authentik"):
                    continue  # optional integrations: the app runs without them
                if need == "ollama" and model_plan.serving(site):
                    continue  # the site's models are llama-server's, reached through the gateway only
                ctx.problem(loc, f"{a} needs {target}, which is not enabled",
                            f"enable {target} in services (or `external:`), or drop {a}")
        apps.append(a)
    return apps


def _allocate_users(
    ctx: _Ctx, user_ips: list[IP], apps: list[str], held: dict[str, str]
) -> tuple[list[Container], list[Tenant], list[Route]]:
    site, cat = ctx.site, ctx.catalog
    net, domain = site.network, site.domain
    user_set = set(user_ips)
    assigned: dict[str, IP] = {}
    seen_names: dict[str, int] = {}
    seen_emails: dict[str, str] = {}
    valid_users = []
    for i, u in enumerate(site.users):
        if u.name in seen_names:
            ctx.problem(("users", i, "name"), f"user {u.name!r} is listed twice (also users[{seen_names[u.name]}])",
                        "remove the duplicate or rename one")
            continue
        seen_names[u.name] = i
        if u.email:
            key = email_key(u.email)
            if key in seen_emails:
                ctx.problem(("users", i, "email"), f"e-mail {u.email} is already {seen_emails[key]}'s",
                            "give every user their own address (apps sign people in by e-mail)")
                continue
            seen_emails[key] = u.name
        valid_users.append((i, u))
    # 1. slots already held (state) and fixed slots (file) first, so free allocation cannot steal them.
    for i, u in valid_users:
        ip_text = held.get(u.name)
        fixed = u.slot
        if fixed is not None and ip_text is not None and IP(ip_text) != fixed:
            ctx.problem(("users", i, "slot"), f"{u.name} already lives at {ip_text}; moving a live container is not "
                        f"done by editing site.yaml", f"set slot: {ip_text}, or remove and re-add the user")
            continue
        ip = IP(ip_text) if ip_text else fixed
        if ip is None:
            continue
        if ip not in user_set and not ip_text:
            ctx.problem(("users", i, "slot"), f"slot {ip} is not in any user range",
                        f"pick an address in {', '.join(net.user_ranges)}")
            continue
        if ctx.take(ip, f"user {u.name}", ("users", i, "slot")):
            assigned[u.name] = ip
    # Slots of users no longer in the file stay reserved until state says their data is purged.
    for name, ip_text in held.items():
        if name not in seen_names:
            ctx.taken.setdefault(IP(ip_text), f"removed user {name} (kept until purged)")
    # 2. the rest, in file order, lowest free address first.
    free = (ip for ip in user_ips if ip not in ctx.taken)
    for i, u in valid_users:
        if u.name in assigned:
            continue
        ip = next(free, None)
        if ip is None:
            total = len(user_ips)
            ctx.problem(("users", i), f"no free user address left for {u.name} ({total} slots in user_ranges)",
                        "add a range to network.user_ranges, e.g. 10.0.6.200-10.0.6.249")
            break
        ctx.take(ip, f"user {u.name}", ("users", i))
        assigned[u.name] = ip

    # 3. names per back end.
    tpl = site.user_template.resources
    app_objs = [cat.apps[a] for a in apps]
    containers, tenants, routes = [], [], []
    redis_dbs = site.redis.isolation == "db"
    redis_own = redis_instances(site, cat)
    for n_user, (i, u) in enumerate(valid_users, start=1):
        if u.name not in assigned:
            continue
        ip = assigned[u.name]
        loc = ("users", i, "name")
        ctid = names.ctid_for(ip, net.subnet)
        tfile = names.traefik_file(ip, net.traefik.file_pattern)
        res = u.resources or tpl
        dbs = tuple(names.pg_database(d, u.name) for app in app_objs for d in app.databases)
        buckets = tuple(names.bucket(u.name, b) for app in app_objs for b in app.buckets)
        colls = tuple(names.qdrant_collection(u.name, c) for app in app_objs for c in app.qdrant_collections)
        hosts = {app.name: names.user_host(app.route_prefix, u.name, domain) for app in app_objs}
        for text in (names.pg_role(u.name), *dbs):
            if msg := names.pg_identifier_problem(text):
                ctx.problem(loc, msg, "use a shorter user name")
        for b in buckets:
            if msg := names.bucket_problem(b):
                ctx.problem(loc, msg, "use a shorter user name (letters, digits, '-')")
        for h in hosts.values():
            if msg := names.dns_label_problem(h.split(".", 1)[0]):
                ctx.problem(loc, msg, "use a shorter user name")
        db_no = None
        if redis_dbs:
            db_no = site.redis.first_db + n_user - 1
            if db_no >= site.redis.databases:
                ctx.problem(("redis", "isolation"),
                            f"user {u.name} would need Redis DB {db_no} but the server has {site.redis.databases} "
                            f"databases (0-{site.redis.databases - 1}); DB numbers also isolate nothing",
                            "set redis.isolation: acl (an ACL user and key prefix per user)")
        redis_port = names.redis_port(ctid) if redis_own else None
        if redis_own and redis_port is None:
            ctx.problem(loc, f"user {u.name}'s own Redis would listen on {names.REDIS_USER_PORT_BASE} + CTID {ctid}, "
                             "past port 65535", "give the user an address in the primary subnet or one whose third octet is "
                        "below 50, or set `redis.isolation: acl` (every user in the shared server, by ACL)")
        containers.append(
            Container(
                ctid=ctid, ip=str(ip), prefixlen=24 if ip not in net.subnet else net.subnet.prefixlen,
                gateway=str(net.gateway) if ip in net.subnet else str(IP(int(ip) & 0xFFFFFF00 | 1)),
                hostname=names.user_hostname(u.name), role="user", name=u.name,
                services=tuple(apps), phase=3 if n_user == 1 else 4,
                memory_mb=res.memory_mb, cores=res.cores, disk_gb=res.disk_gb, traefik_file=tfile,
                node=u.node or _pinned(site, u.name),
            )
        )
        tenants.append(
            Tenant(
                user=u.name, email=u.email, ctid=ctid, ip=str(ip),
                postgres_role=names.pg_role(u.name), databases=dbs,
                redis_user=names.redis_user(u.name), redis_prefix=names.redis_prefix(u.name), redis_db=db_no,
                qdrant_prefix=names.qdrant_prefix(u.name), qdrant_collections=colls,
                buckets=buckets, s3_key_name=names.s3_key_name(u.name), apps=tuple(apps),
                ports={app.name: app.port for app in app_objs}, hosts=hosts,
                qdrant_vector_size=site.embedding.size, operator=u.operator,
                gateway=ctx.via_gateway,
                redis_port=redis_port,
            )
        )
        for app in app_objs:
            url = f"http://{ip}:{app.port}"
            routes.append(Route(host=hosts[app.name], url=url, urls=(url,), service=app.name, ctid=ctid,
                                traefik_file=tfile, owner=u.name, access=app.access,
                                health_path=app.health.path, own_login=app.own_login,
                                public_paths=tuple(app.public_paths)))
    return containers, tenants, routes


def _with_user_redis(shared: list[Container], extra_mb: int) -> list[Container]:
    """The Redis container holds the shared server (its catalog or site memory) and every user's
    own server (redis.isolation=instance): each adds the most it may hold, so no user filling its
    own bound can push the container, and everyone's Redis with it, out of memory."""
    return [replace(c, memory_mb=c.memory_mb + extra_mb) if c.name == "redis" else c for c in shared]


def _shared_routes(ctx: _Ctx, containers: list[Container]) -> list[Route]:
    site, cat = ctx.site, ctx.catalog
    by_service: dict[str, list[Container]] = {}
    for c in containers:
        by_service.setdefault(c.name, []).append(c)
    routes = []
    fronted = ctx.via_gateway  # every model call goes through it, with a key
    for n, cs in by_service.items():
        svc = cat.services[n]
        ov = site.services[n]
        first = cs[0]
        if svc.route is not None:
            assert svc.access is not None, "the catalog requires `access` with a route (catalog/model.py)"
            urls = tuple(f"http://{c.ip}:{svc.route.port}" for c in cs)
            routes.append(Route(host=names.shared_host(svc.route.prefix, site.domain), url=urls[0], urls=urls,
                                service=n, ctid=first.ctid, traefik_file=first.traefik_file,
                                # Ollama's own route would let any signed-in person use every model
                                # unattributed and past their budget: operators only, where the gateway runs
                                access="operator" if n == "ollama" and fronted else svc.access,
                                health_path=svc.health.path if svc.health.type == "http" else "/",
                                own_login=svc.own_login, public_paths=tuple(svc.public_paths)))
        elif ov.expose_tcp and svc.ports:
            p = svc.ports[0]
            urls = tuple(f"tcp://{c.ip}:{p.port}" for c in cs)
            routes.append(Route(host=names.shared_host(n, site.domain), url=urls[0], urls=urls, service=n,
                                ctid=first.ctid, traefik_file=first.traefik_file, kind="tcp", access="operator",
                                own_login=svc.own_login))
    return routes


def _check_hosts(ctx: _Ctx, routes: list[Route]) -> None:
    seen: dict[str, str] = {}
    for r in routes:
        key = r.host
        who = f"{r.service}" + (f" of {r.owner}" if r.owner else "")
        if key in seen:
            ctx.problem(("users",) if r.owner else ("services", r.service),
                        f"domain {key} is used by both {seen[key]} and {who}", "rename the user or the route prefix")
        seen[key] = who


def _check_driver(ctx: _Ctx) -> None:
    d = ctx.site.driver
    provider = ctx.site.identity.provider
    if provider and (why := PROVIDER_REFUSED.get((d.kind, provider))):
        ctx.problem(("identity", "provider"), f"identity provider {provider!r} cannot work with driver {d.kind!r}",
                    why)
    if d.kind != "proxmox":
        return
    for key, node in d.pinned.items():
        if node not in d.nodes:
            ctx.problem(("driver", "pinned", key), f"node {node!r} is not in driver.nodes", "add the node or fix the name")
    for i, u in enumerate(ctx.site.users):
        if u.node and u.node not in d.nodes:
            ctx.problem(("users", i, "node"), f"node {u.node!r} is not in driver.nodes", "add the node or fix the name")
    for n, ov in ctx.site.services.items():
        if ov.node and ov.node not in d.nodes:
            ctx.problem(("services", n, "node"), f"node {ov.node!r} is not in driver.nodes", "add the node or fix the name")


def _certificates(site: Site, routes: list[Route],
                  current: dict[str, tuple[str, ...]] | None) -> tuple[Certificate, ...]:
    """Certificate units: the site's own hosts (Traefik's API included) first, then one per user."""
    shared = tuple([names.shared_host("traefik", site.domain)] + [r.host for r in routes if r.owner is None])
    units: dict[str, list[str]] = {}
    for r in routes:
        if r.owner is not None:
            units.setdefault(r.owner, []).append(r.host)
    return certs_plan.plan_certificates([shared] + [tuple(u) for u in units.values()], current,
                                          site.domain if site.network.traefik.dns_provider else None)


def _resolve(site: Site, catalog: Catalog, held: dict[str, str],
             current_certs: dict[str, tuple[str, ...]] | None = None) -> tuple[ResolvedSite | None, _Ctx]:
    ctx = _Ctx(site, catalog)
    shared_range, user_ips = _check_network(ctx)
    _check_services(ctx)
    for loc, msg, fix in model_plan.check(site, catalog):
        ctx.problem(loc, msg, fix)
    _check_driver(ctx)
    apps = _check_apps(ctx)
    shared, endpoints = _allocate_shared(ctx, shared_range)
    users, tenants, user_routes = _allocate_users(ctx, user_ips, apps, held)
    routes = _shared_routes(ctx, shared) + user_routes
    _check_hosts(ctx, routes)
    if ctx.problems:
        return None, ctx
    own_redis = own_redis_mb(site, tenants)
    shared = _with_user_redis(shared, own_redis)
    containers = shared + users
    svc_instances = len(shared)
    totals = Totals(
        containers=len(containers), shared_containers=len(shared), user_containers=len(users),
        service_instances=svc_instances + len(users) * len(apps), app_instances=len(users) * len(apps),
        memory_gb=round(sum(c.memory_mb for c in containers) / 1024, 1),
        disk_tb=round(sum(c.disk_gb for c in containers) / 1000, 2),
        cores=sum(c.cores for c in containers),
    )
    net = site.network
    proxy_file = names.traefik_file(net.traefik.address, net.traefik.file_pattern)
    notes = []
    if site.redis.isolation == "db":
        notes.append("redis.isolation=db: Redis DB numbers do not isolate users (any client may SELECT).")
    elif "redis" in enabled_services(site, catalog) and not redis_instances(site, catalog):
        notes.append("Redis users share one server's memory and connections (redis.isolation=acl, or an "
                     "`external:` Redis where aicommons cannot start a server per user): one user can fill them.")
    elif own_redis:
        rc, per_user = next(c for c in shared if c.name == "redis"), site.redis.user_server_mb()
        notes.append(f"Redis container: {rc.memory_mb} MB = {rc.memory_mb - own_redis} MB for the shared server + "
                     f"{own_redis // per_user} users x {per_user} MB for their own "
                     f"(redis.user_memory_mb {site.redis.user_memory_mb} + clients' buffers + the process).")
    if site.object_storage == "minio":
        notes.append("MinIO's community edition is archived (Feb 2026); plan a move to Garage.")
    gone = deployed.undeployed(site, catalog)
    unavailable = deployed.unavailable_apps(site, apps, catalog)
    # The one test of which provider signs people in here (plan/identity.py sign_in derives the rest).
    sign_in = deployed.sign_in_provider(site, endpoints, gone)
    routes, withheld = deployed.published_routes(routes, gone, unavailable, sign_in)
    if sign_in is None:
        hidden = sorted({svc for svc, why in withheld.items() if why == deployed.NO_SIGN_IN})
        if hidden:
            provider = site.identity.provider
            why = "is not deployed here" if provider in gone else "is not enabled"
            notes.append(f"the sign-in provider {provider} {why}: these have no sign-in and no login of their own, "
                         f"so they are not published: {', '.join(hidden)} (enable {provider} to publish them)")
    lost = sorted(svc for svc, why in withheld.items() if why != deployed.NO_SIGN_IN)
    if lost:
        notes.append("no route (nothing would answer it): " + "; ".join(f"{svc}: {withheld[svc]}" for svc in lost))
    certs = _certificates(site, routes, current_certs)
    cert_changes = certs_plan.changes(current_certs, certs)
    issued = [n for n, what in cert_changes.items() if what != "removed"]
    if len(issued) > certs_plan.WEEKLY_LIMIT:
        notes.append(f"certificates: this change asks Let's Encrypt for {len(issued)} certificates; it issues at most "
                     f"{certs_plan.WEEKLY_LIMIT} per registered domain per week, so the rest would wait "
                     "(set network.traefik.dns_provider for one wildcard, or add users in smaller steps)")
    if model_plan.serving(site):
        notes += model_plan.notes(site)
    fallbacks = deployed.fallbacks(site, [a for a in apps if a not in unavailable], catalog, gone, ctx.via_gateway)
    runtime_notes = _runtime_notes(site, unavailable, fallbacks, gone) if users else []
    notes += runtime_notes
    return ResolvedSite(site=site, containers=containers, routes=routes, tenants=tenants, endpoints=endpoints,
                        totals=totals, proxy_ip=str(net.traefik.address), proxy_file=proxy_file, notes=notes,
                        operator_sources=operator_sources(site), proxy_source=proxy_source(site), certificates=certs,
                        certificate_changes=cert_changes, undeployed=gone, unavailable=unavailable,
                        fallbacks=fallbacks, runtime_notes=runtime_notes, sign_in=sign_in, withheld=withheld,
                        model_units=tuple(model_plan.model_units(site, catalog)),
                        models_via_gateway=ctx.via_gateway), ctx


def _runtime_notes(site: Site, unavailable: dict[str, str], fallbacks: dict[str, dict[str, str]],
                   gone: dict[str, str]) -> list[str]:
    rt = site.user_template.runtime
    out = [f"apps run {'natively (published packages as systemd services)' if rt == 'native' else 'in Docker'}"
           f" (user_template.runtime: {rt})"]
    if rt == "native" and site.driver.kind == "proxmox":
        out.append("runtime native on proxmox: the Proxmox driver does not deliver the app layers yet; the "
                   "units are pushed but the apps are not started (use runtime: docker there)")
    out += [f"{app}: not available in the native runtime ({why})" for app, why in unavailable.items()]
    out += [f"{app}: {svc} {'is not deployed here' if svc in gone else 'is not enabled'} -> {fb}"
            if not fb.startswith("not used:") else f"{app}: {svc} {fb}"
            for app, fbs in fallbacks.items() for svc, fb in fbs.items()]
    return out


def to_problems(ctx: _Ctx, index: LineIndex | None) -> list[Problem]:
    return [Problem(path=format_path(loc), message=msg, fix=fix, line=index.line(loc) if index else None)
            for loc, msg, fix in ctx.problems]


def resolve(site: Site, catalog: Catalog | None = None, held: dict[str, str] | None = None,
            index: LineIndex | None = None,
            certificates: dict[str, tuple[str, ...]] | None = None) -> ResolvedSite:
    """The resolved site, or SiteInvalid listing every problem. `held`: user -> IP kept from state;
    `certificates`: the certificate assignment in force (state meta `certificates`), kept stable."""
    resolved, ctx = _resolve(site, catalog or load_catalog(), held or {}, certificates)
    if resolved is None:
        raise SiteInvalid(to_problems(ctx, index))
    return resolved


def check(site: Site, catalog: Catalog | None = None, held: dict[str, str] | None = None,
          index: LineIndex | None = None) -> list[Problem]:
    """Every problem with the site (empty when valid)."""
    _, ctx = _resolve(site, catalog or load_catalog(), held or {})
    return to_problems(ctx, index)
