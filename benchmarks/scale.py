"""The reference architecture's shape on one host, on the LXC driver: 33 shared + 50 user containers.

Runs the real CLI on the reference site (`aicommons init`'s site.yaml: every shared service of
the reference architecture, 50 users) with the users' apps off (`user_template.apps: []`), so it
fits a 2-core, 24 GB machine, in its own namespace (`i25scale`) and lxcpath. Reports: time from
nothing to `up` done, time of a no-op re-apply (`up` again), each container's memory (its cgroup,
idle), the host limits apply raised, and `down --purge`. Then, with `--apps`, the default apps on:
users are added one by one until one's apps do not come up or the host's available memory falls
below `--reserve-gb`, and the number reached is reported.

Shared services whose recipes download from outside Debian's mirror get their containers but no
service (docs/lxc.md): the container count is the reference architecture's, the services inside
are what this host can install (PostgreSQL, Redis, Prometheus).

    flock /tmp/aicommons-heavy.lock .venv/bin/python benchmarks/scale.py [--users 50] [--apps | --apps-only]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

AIC = str(Path(sys.executable).parent / "aicommons")
NAME = "i25scale"


def cli(d: Path, *args: str, timeout: float = 7200) -> subprocess.CompletedProcess:
    return subprocess.run([AIC, *args, "-f", str(d / "site.yaml")], cwd=d, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def site_yaml(d: Path, users: int, apps: bool) -> str:
    from aicommons.spec.default import render_site_yaml

    text = render_site_yaml(users=users, driver="lxc")
    text = re.sub(r"^name: .*$", f"name: {NAME}", text, count=1, flags=re.M)
    text = re.sub(r"^  kind: lxc(.*)$", rf"  kind: lxc\1\n  netns: {NAME}\n  lxcpath: {d / 'lxc'}", text,
                  count=1, flags=re.M)
    if not apps:
        text = re.sub(r"^  apps: \[.*\]$", "  apps: []", text, count=1, flags=re.M)
    return text


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def container_memory(d: Path) -> dict[int, float]:
    from aicommons.drivers.lxc import limits

    out = {}
    for ct in sorted(p for p in (d / "lxc").iterdir() if p.name.isdigit()):
        g = limits.group("memory", NAME, int(ct.name))
        try:
            out[int(ct.name)] = int((g / "memory.usage_in_bytes").read_text()) / 2**20
        except OSError:
            continue
    return out


def timed(d: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    r = cli(d, *args)
    return time.monotonic() - t0, r


def shape(users: int) -> None:
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-", dir="/var/tmp") as tmp:
        d = Path(tmp)
        d.chmod(0o755)  # the containers' root (an unprivileged host uid) passes it to reach its rootfs
        (d / "site.yaml").write_text(site_yaml(d, users, apps=False))
        try:
            up, r = timed(d, "up", "--yes")
            if r.returncode != 0:
                raise SystemExit(f"up failed after {up:.0f} s:\n{(r.stdout + r.stderr)[-4000:]}")
            raised = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("host: ")]
            mem = container_memory(d)
            again, r2 = timed(d, "up", "--yes")
            shared = {c: m for c, m in mem.items() if c < 200}
            user = {c: m for c, m in mem.items() if c >= 200}
            print(f"containers running: {len(mem)} ({len(shared)} shared, {len(user)} users, apps off)")
            print(f"up from nothing:              {up:7.1f} s")
            print(f"up again (no-op):             {again:7.1f} s  (exit {r2.returncode})")
            for what, group in (("shared", shared), ("user", user)):
                if group:
                    v = sorted(group.values())
                    print(f"memory per {what} container:   median {v[len(v) // 2]:6.0f} MB, max {v[-1]:6.0f} MB, "
                          f"total {sum(v) / 1024:5.1f} GB")
            for line in raised:
                print(line)
        finally:
            down, r3 = timed(d, "down", "--yes", "--purge")
            print(f"down --purge:                 {down:7.1f} s  (exit {r3.returncode})")


def with_apps(max_users: int, reserve_gb: float, budget_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-", dir="/var/tmp") as tmp:
        d = Path(tmp)
        d.chmod(0o755)
        (d / "site.yaml").write_text(site_yaml(d, 1, apps=True))
        reached = 0
        try:
            t, r = timed(d, "up", "--yes")
            if r.returncode != 0:
                raise SystemExit(f"up with apps failed:\n{(r.stdout + r.stderr)[-3000:]}")
            reached = 1
            print(f"apps on: user1 up in {t:.0f} s; {mem_available_gb():.1f} GB available")
            began = time.monotonic()
            for i in range(2, max_users + 1):
                if time.monotonic() - began > budget_s:
                    print(f"stopped: the time budget ({budget_s:.0f} s) is spent, not the host")
                    break
                if mem_available_gb() < reserve_gb:
                    print(f"stopped: under {reserve_gb} GB available")
                    break
                t, r = timed(d, "users", "add", f"user{i}", "--email", f"user{i}@example.org")
                if r.returncode != 0:
                    print(f"user{i} did not come up: {(r.stdout + r.stderr)[-600:]}")
                    break
                reached = i
                print(f"user{i} up in {t:.0f} s; {mem_available_gb():.1f} GB available")
        finally:
            print(f"apps on: {reached} users on this host")
            cli(d, "down", "--yes", "--purge")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--apps", action="store_true", help="then, apps on: add users until the host is full")
    ap.add_argument("--apps-only", action="store_true", help="only the apps-on part")
    ap.add_argument("--max-app-users", type=int, default=50)
    ap.add_argument("--reserve-gb", type=float, default=3.0)
    ap.add_argument("--budget-s", type=float, default=7200, help="stop adding users after this long")
    args = ap.parse_args()
    if not args.apps_only:
        shape(args.users)
    if args.apps or args.apps_only:
        with_apps(args.max_app_users, args.reserve_gb, args.budget_s)


if __name__ == "__main__":
    main()
