"""Benchmark: the 50-user seed site applied through the engine (`apply_site`, the product's path)
on a simulated 3-node Proxmox cluster (tests/pvesim), with a token holding only the ACL that
docs/proxmox.md documents.

Clone and create tasks take `--clone-seconds` (default 1 s) times `--scale`. Prints the wall
time against the lower bound of fully serialized clones (every clone one after another, as a
single template's lock forces), measured in the same run, plus the API calls and writes of the
first apply and of a second one (which must write nothing).

    .venv/bin/python benchmarks/proxmox.py [--scale 0.5] [--users 50]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aicommons.engine.api import apply_site  # noqa: E402
from tests.test_proxmox_driver import engine_kw, new_sim, write_site  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--clone-seconds", type=float, default=1.0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every simulated task duration")
    ap.add_argument("--parallelism", type=int, default=8)
    args = ap.parse_args()
    logging.getLogger("paramiko").addHandler(logging.NullHandler())  # quiet "connection reset" at teardown
    t = args.clone_seconds * args.scale
    sim = new_sim(task_seconds={"vzclone": t, "vzcreate": t, "vzstart": 0.1 * t, "resize": 0.1 * t})
    try:
        with tempfile.TemporaryDirectory(prefix="bench-proxmox-") as tmp:
            site_file = write_site(sim, Path(tmp), args.users)
            kw = {**engine_kw(sim, site_file), "parallelism": args.parallelism, "out": open("/dev/null", "w")}
            sim.reset_counts()
            started = time.perf_counter()
            first = apply_site(site_file, **kw)
            wall = time.perf_counter() - started
            assert first.ok, [(o.step, o.detail) for o in first.errors]
            calls, writes = sim.api.total(), sim.writes()
            containers = first.plan.resolved.containers
            clones = sum(1 for c in containers if kw["driver"].needs_template(c))
            sim.reset_counts()
            started = time.perf_counter()
            second = apply_site(site_file, **kw)
            wall2 = time.perf_counter() - started
            assert second.ok and second.plan.empty and sim.writes() == 0
            n = len(containers)
            bound = clones * t
            print(f"site: {args.users} users, {n} containers ({clones} linked clones, {n - clones} created from the "
                  f"ostemplate) on {len(sim.ssh)} nodes; clone/create task {t:g}s (scale {args.scale:g}); token "
                  "limited to the documented ACL; engine apply_site, parallelism "
                  f"{args.parallelism}")
            print(f"first apply:  {wall:6.2f}s wall; fully serialized clones alone would take >= {bound:.2f}s "
                  f"-> wall / serialized bound = {wall / bound:.2f}")
            print(f"              {calls} API calls ({calls / n:.1f} per container), {writes} writing "
                  f"({writes / n:.1f} per container), {len(first.outcomes)} steps")
            print(f"second apply: {wall2:6.2f}s wall, {sim.api.total()} API calls ({sim.api.total() / n:.1f} per "
                  f"container), {sim.writes()} writing")
            kw["driver"].close()
    finally:
        sim.close()


if __name__ == "__main__":
    main()
