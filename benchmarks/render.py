"""Render benchmark: time to render the 50-user site, and time from writing a new user's
Traefik file until the real Traefik serves its route.

Baselines, measured in the same run:
- render: resolving the site (`plan.resolve`) plus one `yaml.safe_dump` of the whole plan;
- new route: the same new-user file dropped into an otherwise empty dynamic directory
  (what Traefik's file watcher costs by itself), against the directory holding the 50-user site.
Run: .venv/bin/python benchmarks/render.py   (bounded: about a minute)
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import yaml  # noqa: E402

from aicommons.plan import resolve  # noqa: E402
from aicommons.render import render_site, render_user  # noqa: E402
from aicommons.render.write import write_tree  # noqa: E402
from tests.test_traefik_harness import Backends, FakeSecrets, Traefik, loopback_site, make_site  # noqa: E402

ROUNDS = 5
RENDER_GOAL = 1.0
ROUTE_GOAL = 3.0


def _times(fn, rounds: int = ROUNDS) -> list[float]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _median(fn, rounds: int = ROUNDS) -> float:
    return statistics.median(_times(fn, rounds))


def bench_render() -> None:
    site = make_site(50)
    secrets = FakeSecrets()
    render_site(site, secrets)  # warm the catalog and secrets
    base = _median(lambda: yaml.safe_dump(resolve(site.site).to_dict()))
    runs = _times(lambda: render_site(site, secrets))
    full = statistics.median(runs)
    one = _median(lambda: render_user(site, "user25", secrets))
    files = len(render_site(site, secrets))
    print(f"render 50-user site: {full * 1000:.0f} ms ({files} files), goal < {RENDER_GOAL * 1000:.0f} ms: "
          f"{'met' if full < RENDER_GOAL else 'MISSED'}")
    print(f"  fastest of {ROUNDS}: {min(runs) * 1000:.0f} ms (the machine is shared: the median includes its load)")
    print(f"  baseline (resolve + dump the plan): {base * 1000:.0f} ms; ratio render/baseline = {full / base:.1f}x")
    print(f"  render one user: {one * 1000:.1f} ms ({one / full:.1%} of the site)")


def _time_to_serve(with_site: bool) -> float:
    """Seconds from the atomic write of user51's file until Traefik answers 200 on its route."""
    backends = Backends()
    s51 = loopback_site(make_site(51), backends)
    s50 = dataclasses.replace(s51, routes=[r for r in s51.routes if r.owner != "user51"],
                              tenants=[t for t in s51.tenants if t.user != "user51"])
    backends.start()
    secrets = FakeSecrets()
    tr = Traefik(s50)
    try:
        files = {p: f for p, f in render_site(s50, secrets).items() if p.startswith("traefik/dynamic/")}
        if not with_site:  # the proxy's own file only (shared middlewares the new routes use)
            files = {p: f for p, f in files.items() if p.endswith("/" + s50.proxy_file)}
        write_tree(files, tr.root)
        tr.start()
        tr.wait_routers({"ai-user50@file"} if with_site else {"traefik-api@file"})
        time.sleep(2.5)  # past Traefik's provider throttle, so the write starts a fresh cycle
        new = {p: f for p, f in render_user(s51, "user51", secrets).items() if p.startswith("traefik/")}
        route = next(r for r in s51.routes if r.owner == "user51")
        name, value = s51.outpost.session_for("user51", route.host)  # user51 signed in (the stand-in's cookie)
        with tr.client() as c:
            t0 = time.perf_counter()
            write_tree(new, tr.root)
            while time.perf_counter() - t0 < 30:
                try:
                    if c.get("/", headers={"Host": route.host, "Cookie": f"{name}={value}"}).status_code == 200:
                        return time.perf_counter() - t0
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        return float("inf")
    finally:
        tr.cleanup()
        backends.close()


def bench_route() -> None:
    base = _time_to_serve(with_site=False)
    full = _time_to_serve(with_site=True)
    print(f"new user's route served after: {full:.2f} s with the 50-user site loaded, goal < {ROUTE_GOAL:.0f} s: "
          f"{'met' if full < ROUTE_GOAL else 'MISSED'}")
    print(f"  baseline (same file, empty directory): {base:.2f} s; ratio = {full / base:.2f}x")


if __name__ == "__main__":
    bench_render()
    bench_route()
