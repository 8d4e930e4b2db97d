"""Benchmark the engine's control-plane time on the 50-user seed site (fake driver and back ends).

Prints: bare resolve() (the baseline), a full first apply, a no-op plan+apply (goal < 2 s) and a
one-user change (goal < 1 s), each with its ratio to the baseline measured in this same run.
Run: .venv/bin/python benchmarks/apply.py
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from aicommons.drivers.fake import FakeDriver  # noqa: E402
from aicommons.engine.api import apply_site  # noqa: E402
from aicommons.plan import resolve  # noqa: E402
from aicommons.spec.default import render_site_yaml  # noqa: E402
from aicommons.spec.load import load_site  # noqa: E402
from aicommons.tenancy.fake import fake_backends  # noqa: E402


def timed(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    os.environ.pop("AICOMMONS_SECRET_KEY", None)
    with tempfile.TemporaryDirectory() as d:
        site = Path(d) / "site.yaml"
        site.write_text(render_site_yaml(users=50))
        world = Path(d) / "world"

        def run(**kw):
            r = apply_site(site, driver=FakeDriver(world), backends=fake_backends(world), out=io.StringIO(), **kw)
            assert r.ok, [(o.step, o.detail) for o in r.errors][:3]
            return r

        base = timed(lambda: resolve(load_site(site)[0]), repeat=5)
        t0 = time.perf_counter()
        first = run()
        full = time.perf_counter() - t0
        noop = timed(lambda: run())
        assert run().plan.empty

        def change_one():
            data = yaml.safe_load(site.read_text())
            u = data["users"][6]
            u["resources"] = {"memory_mb": 12288 if (u.get("resources") or {}).get("memory_mb") != 12288 else 16384,
                              "cores": 4, "disk_gb": 100}
            site.write_text(yaml.safe_dump(data, sort_keys=False))
            r = run()
            # the container, and the site file the portal reads (a person's share is shown: pushed,
            # not restarted, aicservice.restart_basis); the gateway reads none of it: not touched
            assert sorted(r.plan.steps) == ["container.206", "service.portal"], sorted(r.plan.steps)

        one = timed(change_one)
        rows = [("bare resolve() (baseline)", base, None),
                (f"first apply ({len(first.plan.steps)} steps)", full, None),
                ("no-op plan+apply", noop, 2.0),
                ("one-user change plan+apply", one, 1.0)]
        print(f"50-user seed site, fake driver/back ends, {os.cpu_count()} cores")
        for name, t, goal in rows:
            verdict = "" if goal is None else (f" goal < {goal:.0f} s: " + ("met" if t < goal else "MISSED"))
            print(f"  {name:<34} {t * 1000:8.1f} ms  x{t / base:6.1f} baseline{verdict}")


if __name__ == "__main__":
    main()
