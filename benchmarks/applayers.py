"""App layers benchmark: what an unchanged recipe costs once its layer exists, against building it.

Measured in this run, per app:
- build: the layer built from nothing into a scratch cache directory (the machine's pip/npm
  download caches stay warm: the cost of a changed pin or a lost layer), only for the apps
  named with --rebuild (default: chainforge, the quickest; `--rebuild all` takes long);
- cached: `ensure_layer` on the ready layer in the shared cache (what every `up` and every
  added user pays), median of 20 calls.
The first (cold) build of each recipe on this machine is read from its layer's `ready` stamp.
Run: .venv/bin/python benchmarks/applayers.py [--cache-dir DIR] [--rebuild APP ...|all]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aicommons.catalog import load_catalog  # noqa: E402
from aicommons.drivers import applayers  # noqa: E402


def _quiet(_msg: str) -> None:
    pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default="/var/cache/aicommons")
    ap.add_argument("--rebuild", nargs="*", default=["chainforge"])
    args = ap.parse_args()
    apps = {n: a for n, a in load_catalog().apps.items() if a.native and a.native.source != "none"}
    rebuild = list(apps) if args.rebuild == ["all"] else args.rebuild
    print(f"{'app':<12} {'layer':<36} {'first build':>11} {'rebuild':>9} {'cached':>9} {'rebuild/cached':>15}")
    for name, app in sorted(apps.items()):
        path = applayers.layer_dir(app, args.cache_dir)
        if not applayers.is_ready(path):
            print(f"{name:<12} {path.name:<36} not built (aicommons apps build --app {name})")
            continue
        first = json.loads((path / "ready").read_text()).get("seconds")
        cached = []
        for _ in range(20):
            t = time.perf_counter()
            applayers.ensure_layer(app, args.cache_dir, log=_quiet)
            cached.append(time.perf_counter() - t)
        med = statistics.median(cached)
        built = None
        if name in rebuild:
            scratch = Path(tempfile.mkdtemp(prefix="aic-layers-bench-"))
            try:
                if app.native.node:  # the Node layer is shared and not what is measured here
                    (scratch / "apps").mkdir()
                    node = applayers.ensure_node(app.native.node, args.cache_dir, log=_quiet)
                    (scratch / "apps" / node.name).symlink_to(node)
                t = time.perf_counter()
                applayers.ensure_layer(app, scratch, log=_quiet)
                built = time.perf_counter() - t
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        ratio = f"{built / med:>14.0f}x" if built else f"{'-':>15}"
        print(f"{name:<12} {path.name:<36} {first:>10}s {(f'{built:.0f}s' if built else '-'):>9} "
              f"{med * 1000:>7.2f}ms {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
