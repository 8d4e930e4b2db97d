"""`aicommons status`: which checks the plan implies, the verdict, and the table.

Exit codes: 0 healthy, 1 degraded (something down or slow), 2 critical (a phase-1 service down).
`targets` maps a plan address (`10.0.5.103:6379`) to where it is really reached
(`127.0.0.1:6380`): tests point checks at loopback servers, operators at SSH tunnels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from rich.table import Table

from aicommons.catalog import load_catalog
from aicommons.ops.checks import Check, Kind, Result, sweep
from aicommons.ops.targets import retarget
from aicommons.plan.model import ResolvedSite
from aicommons.render.traefik import checked_service, guarded, proxy_file
from aicommons.spec.secretref import resolve_ref
from aicommons.tenancy.registry import DEFAULT_ADMIN

HEALTHY, DEGRADED, CRITICAL = 0, 1, 2
TRAEFIK_API_PORT = 8080
HTTPS_PORT = 443  # Traefik's websecure entry point (render/traefik.py static_config; the LXC driver's too)
ADMIN_SECRET = {"postgres": "postgres_admin_password", "redis": "redis_admin_password"}

Lookup = Callable[[str, str], str]


def _credentials(resolved: ResolvedSite, service: str, secrets: Lookup | None,
                 base_dir: Path | None) -> tuple[str | None, str | None]:
    """Admin login for postgres/redis: the `external:` block's, else the site secret."""
    override = resolved.site.services.get(service)
    ext = override.external if override else None
    if ext is not None:
        pw = resolve_ref(ext.admin_password, f"services.{service}.external.admin_password", base_dir) \
            if ext.admin_password else None
        return ext.admin_user or DEFAULT_ADMIN[service], pw
    if secrets is None:
        return DEFAULT_ADMIN[service], None
    try:
        return DEFAULT_ADMIN[service], secrets("site", ADMIN_SECRET[service])
    except KeyError:  # not generated yet: check without logging in
        return DEFAULT_ADMIN[service], None


def plan_checks(resolved: ResolvedSite, *, secrets: Lookup | None = None,
                targets: Mapping[str, str] | None = None, base_dir: Path | None = None,
                inside_site: bool = False) -> list[Check]:
    """One check per shared service (and instance), per user app, and Traefik.

    `inside_site`: the checker is itself a container of the site (the portal), where the site's
    own firewall applies: a person's apps admit only Traefik, so each is read from Traefik's
    health check of it instead; the model server admits only the gateway, so it is left to
    `aicommons status` on the host."""
    cat = load_catalog()
    targets = targets or {}
    out: list[Check] = []

    def add(name: str, kind: Kind, host: str, port: int, phase: int, **kw) -> None:
        h, p = retarget(host, port, targets)
        out.append(Check(name=name, kind=kind, host=h, port=p, phase=phase, **kw))

    shared = [c for c in resolved.containers if c.role == "shared"]
    hosts: dict[str, list[tuple[str, str]]] = {}
    for c in shared:
        for svc in c.services:
            hosts.setdefault(svc, []).append((c.ip, c.hostname if c.instance > 1 else svc))
    for name, endpoint in resolved.endpoints.items():
        if endpoint.external:
            hosts.setdefault(name, []).append((endpoint.host, name))
    for svc, where in hosts.items():
        spec = cat.services[svc]
        h = spec.health
        crit = spec.phase == 1
        for ip, label in where:
            ep = resolved.endpoints.get(svc)
            port = h.port or (spec.ports[0].port if spec.ports else 0)
            if ep is not None and ep.external and ip == ep.host:
                port = next(iter(ep.ports.values()), port)
            if svc in resolved.undeployed and not (ep is not None and ep.external):
                add(label, "tcp", ip, port, spec.phase, deployed=False,
                    skip_reason=f"not deployed here ({resolved.undeployed[svc]})")
            elif h.type == "none":
                add(label, "tcp", ip, port, spec.phase, skip_reason=h.reason or "no health check")
            elif h.type in ("postgres", "redis"):
                user, pw = _credentials(resolved, svc, secrets, base_dir)
                add(label, h.type, ip, port, spec.phase, critical=crit, username=user, password=pw)
            elif svc == "llama-server" and inside_site:
                add(label, "tcp", ip, port, spec.phase,
                    skip_reason="only the gateway reaches the model server (`aicommons status` checks it)")
            elif svc == "llama-server":
                for mu in resolved.model_units:  # one server per model, each checked by a real request
                    add(f"{label}/{mu.model.name}", "llamacpp", ip, mu.port, spec.phase, critical=crit,
                        expect_models=(mu.model.name, mu.model.kind))
            elif svc == "ollama":
                add(label, "ollama", ip, port, spec.phase, critical=crit,
                    expect_models=tuple(resolved.site.ollama_tags))
            else:
                add(label, h.type, ip, port, spec.phase, critical=crit, path=h.path,
                    expect_status=h.expect_status)
    proxy = str(resolved.proxy_ip)
    add("traefik", "traefik", proxy, TRAEFIK_API_PORT, 1, critical=True)
    # The sign-in provider, where the rendered forward-auth middleware sends Traefik: without it
    # nobody opens any app, so it is critical.
    auth = forward_auth_endpoint(resolved)
    provider = resolved.sign_in or "sign-in provider"
    if auth:
        u = urlsplit(auth)
        add(f"sign-in ({provider})", "signin", u.hostname or "", u.port or 80, 1, critical=True,
            path=u.path or "/", provider=provider, sni=resolved.site.domain)
    # The person's path: each published app through Traefik's HTTPS entry point.
    published = {(r.owner, r.service): r for r in resolved.routes if r.owner and r.kind == "http"}
    for t in resolved.tenants:
        phase = resolved.container(t.ctid).phase
        for app in t.apps:
            app_spec = cat.apps[app]
            if app in resolved.unavailable:
                add(f"{t.user}/{app}", "tcp", t.ip, t.ports[app], phase, user=t.user, deployed=False,
                    skip_reason=f"not available in the native runtime ({resolved.unavailable[app]})")
                continue
            if app_spec.health.type == "none":
                continue
            r = published.get((t.user, app))
            kind: Kind = "http" if app_spec.health.type == "http" else "tcp"
            if inside_site and r is not None:
                add(f"{t.user}/{app}", "backend", proxy, TRAEFIK_API_PORT, phase, user=t.user,
                    path=f"/api/http/services/{checked_service(r)}@file")
            elif inside_site:
                add(f"{t.user}/{app}", kind, t.ip, t.ports[app], phase, user=t.user,
                    skip_reason="no route: only Traefik could reach it")
            else:
                add(f"{t.user}/{app}", kind, t.ip, t.ports[app], phase, user=t.user, path=app_spec.health.path,
                    expect_status=app_spec.health.expect_status)
            if r is not None:
                add(f"{t.user}/{app} via traefik", "route", proxy, HTTPS_PORT, phase, user=t.user, sni=r.host,
                    provider=provider if auth and guarded(resolved, r) else "")
    return out


def forward_auth_endpoint(resolved: ResolvedSite) -> str | None:
    """The forward-auth address the rendered Traefik middlewares name (whatever the provider)."""
    doc = proxy_file(resolved)
    for mw in doc.get("http", {}).get("middlewares", {}).values():
        if "forwardAuth" in mw:
            return str(mw["forwardAuth"]["address"])
    return None


def verdict(results: list[Result]) -> int:
    if any(r.state == "down" and r.check.critical for r in results):
        return CRITICAL
    if any(r.state in ("down", "slow") for r in results):
        return DEGRADED
    return HEALTHY


VERDICT_WORD = {HEALTHY: "healthy", DEGRADED: "degraded", CRITICAL: "critical"}


def run_status(resolved: ResolvedSite, *, secrets: Lookup | None = None,
               targets: Mapping[str, str] | None = None, timeout: float = 3.0, slow_ms: float = 1000.0,
               base_dir: Path | None = None) -> tuple[int, list[Result]]:
    return asyncio.run(status_async(resolved, secrets=secrets, targets=targets, timeout=timeout,
                                    slow_ms=slow_ms, base_dir=base_dir))


async def status_async(resolved: ResolvedSite, *, secrets: Lookup | None = None,
                       targets: Mapping[str, str] | None = None, timeout: float = 3.0, slow_ms: float = 1000.0,
                       base_dir: Path | None = None, inside_site: bool = False) -> tuple[int, list[Result]]:
    """The same sweep for a caller that already runs an event loop (the portal)."""
    checks = plan_checks(resolved, secrets=secrets, targets=targets, base_dir=base_dir, inside_site=inside_site)
    # The person's path second: its TLS handshakes would otherwise slow the direct checks
    # sharing the loop, and a path check is read against the direct ones (app up, route not).
    first = [c for c in checks if c.kind != "route"]
    done = dict(zip(map(id, first), await sweep(first, timeout=timeout, slow_ms=slow_ms), strict=True))
    paths = [c for c in checks if c.kind == "route"]
    done.update(zip(map(id, paths), await sweep(paths, timeout=timeout, slow_ms=slow_ms), strict=True))
    results = [done[id(c)] for c in checks]
    return verdict(results), results


def limit_results(readings: list) -> list[Result]:
    """One row for the containers' limits as the kernel holds them (a driver that reads them back,
    drivers/base.py ReadsLimits): down, naming container, limit, wanted and found, when any differs
    from the plan (LXC did not apply it, or someone changed it by hand; the next `apply` puts it back)."""
    if not readings:
        return []
    bad = [r for r in readings if not r.ok]
    check = Check(name="container limits", kind="limits", host="cgroups", port=0, phase=1)
    reason = ("; ".join(map(str, bad)) + " (`aicommons apply` puts them back)" if bad else
              f"{len(readings)} limits of {len({r.ctid for r in readings})} running containers as planned")
    return [Result(check, "down" if bad else "ok", 0.0, reason)]


def to_json(code: int, results: list[Result]) -> dict:
    return {
        "verdict": VERDICT_WORD[code], "exit_code": code,
        "checks": [{"name": r.check.name, "kind": r.check.kind, "address": r.check.address,
                    "phase": r.check.phase, "user": r.check.user, "critical": r.check.critical,
                    "deployed": r.check.deployed,
                    "state": r.state, "latency_ms": round(r.latency_ms, 1), "reason": r.reason}
                   for r in results],
    }


STYLE = {"ok": "green", "slow": "yellow", "down": "red", "skipped": "dim"}


def table(code: int, results: list[Result]) -> Table:
    """Shared services by phase; users one row each unless an app of theirs is unhealthy."""
    t = Table(title=f"site {VERDICT_WORD[code]}", title_justify="left")
    for col in ("phase", "check", "state", "latency", "reason"):
        t.add_column(col, justify="right" if col == "latency" else "left")
    shared = sorted((r for r in results if r.check.user is None), key=lambda r: (r.check.phase, r.check.name))
    for r in shared:
        t.add_row(str(r.check.phase), r.check.name, f"[{STYLE[r.state]}]{r.state}[/]",
                  f"{r.latency_ms:.0f} ms", r.reason)
    users: dict[str, list[Result]] = {}
    for r in results:
        if r.check.user is not None:
            users.setdefault(r.check.user, []).append(r)
    for user, rs in users.items():
        for r in rs:
            if not r.check.deployed:
                t.add_row(str(r.check.phase), r.check.name, f"[{STYLE[r.state]}]{r.state}[/]", "", r.reason)
        rs = [r for r in rs if r.check.deployed]
        if not rs:
            continue
        bad = [r for r in rs if r.state in ("down", "slow")]
        slowest = max((r.latency_ms for r in rs), default=0.0)
        if not bad:
            t.add_row(str(rs[0].check.phase), f"{user} ({len(rs)} apps)", "[green]ok[/]", f"{slowest:.0f} ms", "")
        for r in bad:
            t.add_row(str(r.check.phase), r.check.name, f"[{STYLE[r.state]}]{r.state}[/]",
                      f"{r.latency_ms:.0f} ms", r.reason)
    return t
