"""The data each page shows, as plain dicts: the HTML templates and the JSON API render the same."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aicommons.ops.status import VERDICT_WORD
from aicommons.portal.site import SiteView


def _when(ts: float | str | None) -> str | None:
    if ts is None:
        return None
    t = dt.datetime.fromisoformat(ts) if isinstance(ts, str) else dt.datetime.fromtimestamp(ts, dt.UTC)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _usage(u) -> dict | None:
    if u is None:
        return None
    return {"memory_mb": round(u.memory_mb), "memory_limit_mb": u.memory_limit_mb,
            "memory_percent": round(100 * u.memory_mb / u.memory_limit_mb) if u.memory_limit_mb else None,
            "cpu_percent": None if u.cpu_percent is None else round(u.cpu_percent, 1)}


def _app_states(results, user: str) -> dict[str, dict]:
    """Each app's own check (its port, or Traefik's health check of it from inside the site); the
    person's path (`<app> via traefik`) where that is all there is."""
    out: dict[str, dict] = {}
    for r in results:
        if r.check.user != user:
            continue
        app, _, via = r.check.name.split("/", 1)[1].partition(" via ")
        if via and app in out:
            continue
        out[app] = {"state": r.state, "latency_ms": round(r.latency_ms), "reason": r.reason}
    return out


def _container(view: SiteView, c, apps: list[dict]) -> str:
    """The driver's word; where it cannot see the containers from here (the portal inside a plain
    LXC site), what the apps say: one answering through Traefik means its container runs."""
    if c is not None:
        return c.status
    if view.sees_containers:
        return "missing"
    return "running" if any(a["state"] == "ok" for a in apps) else "unknown"


def person(view: SiteView, name: str, status, *, backups: list | None = None, containers: dict | None = None,
           allocs: dict | None = None, suspended: set | None = None, usage: dict | None = None) -> dict | None:
    """One person's workbench: None when the site has no slot for them (the keyword arguments
    let the console read the state, driver and backups once for every row)."""
    r = view.resolved()
    t = next((x for x in r.tenants if x.user == name), None)
    if t is None:
        return None
    allocs = allocs if allocs is not None else {a.user: a.status for a in view.state.allocations()}
    suspended = suspended if suspended is not None else view.suspended()
    containers = containers if containers is not None else view.containers()
    c = containers.get(t.ctid)
    usage = usage if usage is not None else view.usage([t.ctid])
    states = _app_states(status[2], name) if status else {}
    apps = []
    for app in t.apps:
        spec = view.catalog.apps[app]
        s = states.get(app, {"state": "unchecked", "latency_ms": None, "reason": "not checked yet"})
        apps.append({"name": app, "title": spec.title, "url": f"https://{t.hosts[app]}", **s})
    last = view.last_backup(name, backups)
    return {
        "user": name, "email": t.email, "ip": t.ip, "ctid": t.ctid,
        "slot": allocs.get(name, "planned"), "suspended": name in suspended,
        "container": _container(view, c, apps), "can_restart": view.sees_containers,
        "usage": _usage(usage.get(t.ctid)) if c is not None and c.status == "running" else None,
        "apps": apps, "apps_ok": sum(a["state"] == "ok" for a in apps),
        "last_backup": {"id": last.id, "at": _when(last.created), "scope": last.user or "site"} if last else None,
        "checked_at": _when(status[0]) if status else None,
    }


def health(status, sweep_ms: float | None = None) -> dict:
    """The sweep for the console: shared services by phase, one line per user."""
    if status is None:
        return {"verdict": "unknown", "checked_at": None, "sweep_ms": None, "shared": [], "users": {}}
    when, code, results = status
    shared = sorted((r for r in results if r.check.user is None), key=lambda r: (r.check.phase, r.check.name))
    users: dict[str, dict] = {}
    for r in results:
        if r.check.user is not None:
            u = users.setdefault(r.check.user, {"ok": 0, "total": 0, "bad": []})
            if r.state == "skipped":
                continue
            u["total"] += 1
            u["ok"] += r.state == "ok"
            if r.state in ("down", "slow"):
                u["bad"].append(f"{r.check.name.split('/', 1)[1]} {r.state}")
    return {"verdict": VERDICT_WORD[code], "exit_code": code, "checked_at": _when(when),
            "sweep_ms": None if sweep_ms is None else round(sweep_ms),
            "shared": [{"name": r.check.name, "phase": r.check.phase, "state": r.state, "critical": r.check.critical,
                        "latency_ms": round(r.latency_ms), "reason": r.reason} for r in shared],
            "users": users}


def users(view: SiteView, status) -> list[dict | None]:
    tenants = view.resolved().tenants
    common: dict[str, Any] = {"backups": view.backups(), "containers": view.containers(), "suspended": view.suspended(),
              "allocs": {a.user: a.status for a in view.state.allocations()},
              "usage": view.usage([t.ctid for t in tenants])}
    return [person(view, t.user, status, **common) for t in tenants]


def backups(view: SiteView) -> list[dict]:
    return [{"id": m.id, "created": _when(m.created), "scope": m.user or "site", "item_count": len(m.items),
             "bytes": sum(i.size for i in m.items),
             "skipped": [i.name for i in m.items if i.kind == "skipped"]} for m in view.backups()]


def audit(view: SiteView) -> dict | None:
    a = view.last_audit()
    if a is None:
        return None
    return {**a, "at": _when(a["at"])}


def usage_chart(data: dict) -> dict:
    """Everyone's model use for the console: one bar per day (tokens, split by person) scaled to
    the busiest day, and the per person x model x app totals."""
    days: dict[str, dict[str, int]] = {}
    for row in data["series"]:
        day = days.setdefault(row["t"][:10], {})
        day[row["user"]] = day.get(row["user"], 0) + row["prompt_tokens"] + row["completion_tokens"]
    top = max((sum(d.values()) for d in days.values()), default=0)
    bars = [{"day": k, "tokens": sum(v.values()), "percent": round(100 * sum(v.values()) / top) if top else 0,
             "by_user": sorted(v.items())} for k, v in sorted(days.items())]
    return {"since": data["since"][:10], "bars": bars, "totals": data["totals"],
            "tokens": sum(b["tokens"] for b in bars), "cost": round(sum(t["cost"] for t in data["totals"]), 4)}
