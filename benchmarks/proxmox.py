"""Benchmark: the 50-user seed site on a simulated 3-node Proxmox cluster (tests/pvesim).

Clone and create tasks take `--clone-seconds` (default 1 s, as asked) times `--scale`. Prints the
wall time against the lower bound of fully serialized clones (every clone one after another, as
a single template's lock forces), the API calls per container, and the second run's calls.

    .venv/bin/python benchmarks/proxmox.py [--scale 0.5] [--users 50]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aicommons.drivers.proxmox.api import RetryPolicy  # noqa: E402
from aicommons.drivers.proxmox.converge import converge  # noqa: E402
from aicommons.drivers.proxmox.driver import ProxmoxDriver  # noqa: E402
from aicommons.plan.resolve import resolve  # noqa: E402
from aicommons.spec.load import load_text  # noqa: E402
from tests.pvesim import Simulator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--clone-seconds", type=float, default=1.0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every simulated task duration")
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    logging.getLogger("paramiko").addHandler(logging.NullHandler())  # quiet "connection reset" at teardown
    t = args.clone_seconds * args.scale
    tasks = {"vzclone": t, "vzcreate": t, "vzstart": 0.1 * t, "resize": 0.1 * t}
    with Simulator(task_seconds=tasks) as sim:
        for i, node in enumerate(sim.ssh):
            sim.add_template(node, 9000 + i)
        site, _ = load_text(sim.site_yaml(args.users))
        resolved = resolve(site)
        driver = ProxmoxDriver.from_site(site, ssh_address=sim.ssh_address, workers=args.workers,
                                         retry=RetryPolicy(base=0.05), ready_poll=0.05)
        n = len(resolved.containers)
        clones = sum(1 for c in resolved.containers if driver.needs_template(c))
        started = time.perf_counter()
        report = converge(driver, resolved.containers, workers=args.workers)
        wall = time.perf_counter() - started
        assert report.ok, report.errors
        calls, writes = sim.api.total(), sim.writes()
        sim.reset_counts()
        started = time.perf_counter()
        again = converge(driver, resolved.containers, workers=args.workers)
        wall2 = time.perf_counter() - started
        assert again.ok and sim.writes() == 0
        bound = clones * t
        print(f"site: {args.users} users, {n} containers ({clones} linked clones, {n - clones} created from the "
              f"ostemplate) on {len(sim.ssh)} nodes; clone/create task {t:g}s (scale {args.scale:g})")
        print(f"first run:  {wall:6.2f}s wall; fully serialized clones alone would take >= {bound:.2f}s "
              f"-> wall / serialized bound = {wall / bound:.2f} ({bound / wall:.1f}x faster)")
        print(f"            {calls} API calls ({calls / n:.1f} per container), {writes} writing "
              f"({writes / n:.1f} per container)")
        print(f"second run: {wall2:6.2f}s wall, {sim.api.total()} API calls ({sim.api.total() / n:.1f} per container), "
              f"{sim.writes()} writing")
        driver.close()


if __name__ == "__main__":
    main()
