"""Time to the first user whose apps all answer on plain LXC, per added user, and idle memory.

Runs the real CLI (`aicommons up`, `users add`, `down`) on a small site — PostgreSQL, Redis, the
services Open WebUI needs enabled (not deployed on LXC: each app gets its fallback) and the six
apps with a published package, run natively from the shared layers — in its own namespace
(`i12bench`), so it never touches another site. "All answer" means: from the site's namespace,
each app's health URL on the user's address gives its expected status. Idle memory is each user
container's memory (its cgroup, and the PSS of its processes: see memory()) after the apps
have been up a while, beside the reference design's 8 GB per user container.

The baseline is the first user with the app layers cached, measured in the same run. Uncached
(`--uncached`) builds every layer into a fresh cache dir first: that is the layer builds
(tens of minutes on 2 cores: Open WebUI, n8n and Flowise each take 8-15), so it is off by default.

    .venv/bin/python benchmarks/lxc.py [--users N] [--idle S] [--uncached]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

AIC = str(Path(sys.executable).parent / "aicommons")
NS = "i12bench"
APPS = ["openwebui", "n8n", "jupyter", "code-server", "chainforge", "flowise"]
SITE = """version: 1
name: i12bench
domain: bench.example.org
network:
  traefik: {{dynamic_dir: {d}/dynamic}}
driver: {{kind: lxc, netns: {ns}, lxcpath: {d}/lxc, cache_dir: {cache}}}
services: {{postgres: {{}}, redis: {{}}, ollama: {{}}, qdrant: {{}}, garage: {{}}}}
user_template:
  apps: {apps}
  resources: {{memory_mb: 8192, cores: 2, disk_gb: 20}}
users: [{{name: user1, email: user1@example.org}}]
"""
REFERENCE_GB = 8.0


def cli(d: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIC, *args, "-f", str(d / "site.yaml")], cwd=d, capture_output=True, text=True,
                          timeout=5400, stdin=subprocess.DEVNULL)


def answering(ip: str) -> dict[str, int]:
    from aicommons.catalog import load_catalog

    cat = load_catalog()
    out = {}
    for a in APPS:
        app = cat.apps[a]
        url = f"http://{ip}:{app.port}{app.health.path}"
        p = subprocess.run(["ip", "netns", "exec", NS, "curl", "-s", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}",
                            url], capture_output=True, text=True)
        out[a] = int(p.stdout or 0) if p.stdout.isdigit() else 0
    return out


def all_answer(ip: str) -> bool:
    from aicommons.catalog import load_catalog

    cat = load_catalog()
    return all(code == cat.apps[a].health.expect_status for a, code in answering(ip).items())


def memory(drv, ctid: int) -> tuple[float, float]:
    """(memory cgroup usage, PSS sum of the container's processes) in GB.

    The container's memory group (limits.py) holds all of it; the processes of the container's
    PID namespace are summed too (PSS: shared layer pages are split between the containers that
    map them)."""
    from aicommons.drivers.lxc import limits

    g = limits.group("memory", NS, ctid)
    usage = int((g / "memory.usage_in_bytes").read_text()) / 2**30 if g.exists() else 0.0
    pss = 0
    for pid in limits.pids_in_pidns(drv._init_pid(ctid)):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return usage, pss / 2**30


def run(cache: str, users: int, idle: float) -> tuple[float, list[float], dict[int, tuple[float, float]]]:
    with tempfile.TemporaryDirectory(prefix="i12bench-") as tmp:
        d = Path(tmp)
        (d / "site.yaml").write_text(SITE.format(d=d, cache=cache, ns=NS, apps=json.dumps(APPS)))
        try:
            t0 = time.monotonic()
            r = cli(d, "up", "--yes")
            if r.returncode != 0 or not all_answer("10.0.5.200"):
                raise SystemExit(f"user1's apps do not all answer after `up` ({answering('10.0.5.200')}):\n"
                                 f"{(r.stdout + r.stderr)[-3000:]}")
            first = time.monotonic() - t0
            more = []
            for i in range(2, users + 1):
                t0 = time.monotonic()
                r = cli(d, "users", "add", f"user{i}", "--email", f"user{i}@example.org")
                if r.returncode != 0 or not all_answer(f"10.0.5.{199 + i}"):
                    raise SystemExit(f"user{i}'s apps do not all answer after `users add`:\n"
                                     f"{(r.stdout + r.stderr)[-3000:]}")
                more.append(time.monotonic() - t0)
            time.sleep(idle)
            from aicommons.drivers.lxc.driver import LxcDriver
            from aicommons.spec.load import load_site

            drv = LxcDriver.from_site(load_site(d / "site.yaml")[0], join=False)
            mem = {199 + i: memory(drv, 199 + i) for i in range(1, users + 1)}
            return first, more, mem
        finally:
            cli(d, "down", "--yes", "--purge")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2)
    ap.add_argument("--idle", type=float, default=60, help="seconds the apps sit idle before memory is read")
    ap.add_argument("--uncached", action="store_true", help="also build every layer into a fresh cache (long)")
    args = ap.parse_args()
    from aicommons.catalog import load_catalog
    from aicommons.drivers import applayers
    from aicommons.drivers.lxc import template

    cache = "/var/cache/aicommons"
    template.ensure(cache, "http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
    t0 = time.monotonic()
    for a in APPS:  # cached before the baseline (built now if this host has none yet)
        applayers.ensure_layer(load_catalog().apps[a], cache, log=lambda m: None)
    print(f"app layers ready (cached or built now):  {time.monotonic() - t0:7.1f} s")
    first, more, mem = run(cache, args.users, args.idle)
    print(f"up -> first user's {len(APPS)} apps answer, layers cached: {first:7.1f} s  (baseline 1.00)")
    if args.uncached:
        cold_cache = tempfile.mkdtemp(prefix="i12bench-cache-", dir="/var/tmp")
        (Path(cold_cache) / "templates").symlink_to(Path(cache) / "templates")  # only the layers are cold
        cold, _, _ = run(cold_cache, 1, 0)
        print(f"up -> first user's apps answer, layers built: {cold:7.1f} s  ({cold / first:.2f} x baseline)")
    else:
        print("up -> first user's apps answer, layers built: not run (--uncached; the layer builds alone take "
              "tens of minutes on 2 cores)")
    for i, s in enumerate(more, start=2):
        print(f"users add user{i} -> its apps answer:       {s:7.1f} s  ({s / first:.2f} x baseline; goal < 60 s)")
    for ctid, (usage, pss) in mem.items():
        print(f"CT {ctid} idle memory: {pss:5.2f} GB PSS of its processes (its memory cgroup: {usage:.2f} GB); "
              f"reference design {REFERENCE_GB:.0f} GB per user: {pss / REFERENCE_GB:.2f} x; goal < 3 GB")


if __name__ == "__main__":
    main()
