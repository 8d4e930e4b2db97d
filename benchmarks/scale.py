"""The reference architecture's shape on one host, on the LXC driver: 33 shared + 50 user containers.

Runs the real CLI on the reference site (`aicommons init`'s site.yaml: every shared service of
the reference architecture, 50 users) with the users' apps off (`user_template.apps: []`), so it
fits a 2-core, 24 GB machine, in its own namespace (`i25scale`) and lxcpath. Reports: time from
nothing to `up` done, time of a no-op re-apply (`up` again), each container's memory (its cgroup,
idle), the host limits apply raised, and `down --purge`. Then, with `--apps`, the default apps on
for a few users (`--app-users`, 3): each user container's memory idle and at its peak and the CPU
its start took, read from its cgroup, and how many users this host's memory holds at that cost
(measured, not assumed; filling the shared machine to find out would starve its neighbours).

Shared services whose recipes download from outside Debian's mirror get their containers but no
service (docs/lxc.md): the container count is the reference architecture's, the services inside
are what this host can install (PostgreSQL, Redis, Prometheus).

    flock /tmp/aicommons-heavy.lock .venv/bin/python benchmarks/scale.py [--users 50] [--apps | --apps-only [--app-users 3]]
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


def host_mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def with_apps(users: int, reserve_gb: float, settle_s: float) -> None:
    """The default site with `users` users and their apps on: each user container's memory (now,
    idle, and its peak since start) and the CPU it used to start, from its own cgroup; then how
    many users this host's memory holds at that cost, beside the shared containers as measured."""
    from aicommons.drivers.lxc import limits

    with tempfile.TemporaryDirectory(prefix=f"{NAME}-", dir="/var/tmp") as tmp:
        d = Path(tmp)
        d.chmod(0o755)
        (d / "site.yaml").write_text(site_yaml(d, users, apps=True))
        try:
            t, r = timed(d, "up", "--yes")
            if r.returncode != 0:
                raise SystemExit(f"up with apps failed after {t:.0f} s:\n{(r.stdout + r.stderr)[-3000:]}")
            answered = re.findall(r"note: bundle\.(user\d+): \1: (\d+) apps answer", r.stdout + r.stderr)
            ctids = sorted(int(p.name) for p in (d / "lxc").iterdir() if p.name.isdigit())
            started = {c: limits.stats(NAME, c) for c in ctids}
            time.sleep(settle_s)  # the apps idle: what is left after their start
            idle = {c: limits.stats(NAME, c) for c in ctids}
            user = {c: s for c, s in idle.items() if c >= 200 and s}
            shared = {c: s for c, s in idle.items() if c < 200 and s}
            print(f"apps on: {users} users up in {t:.0f} s; apps answering: {dict(answered)}")
            for c, s in sorted(user.items()):
                cpu0 = (started[c] or {}).get("cpu_s", 0.0)
                print(f"  CT {c}: {s['memory_mb']:6.0f} MB idle after {settle_s:.0f} s, peak {s['peak_mb']:6.0f} MB, "
                      f"CPU to start {cpu0:6.0f} s, idle CPU {(s['cpu_s'] - cpu0) / settle_s * 100:4.1f} %")
            if not user:
                raise SystemExit("no user container's cgroup could be read")
            per_user = max(s["memory_mb"] for s in user.values())
            peak = max(s["peak_mb"] for s in user.values())
            shared_mb = sum(s["memory_mb"] for s in shared.values())
            total = host_mem_mb()
            room = total - shared_mb - reserve_gb * 1024
            print(f"shared containers ({len(shared)}): {shared_mb / 1024:.1f} GB idle")
            print(f"per user, apps idle: {per_user:.0f} MB (the largest of {len(user)}), peak {peak:.0f} MB")
            print(f"this host ({total / 1024:.1f} GB, {reserve_gb:.0f} GB kept for itself) holds "
                  f"{int(room // per_user)} users with their apps idle, {int(room // peak)} at every user's peak")
        finally:
            t, r = timed(d, "down", "--yes", "--purge")
            print(f"down --purge: {t:.0f} s (exit {r.returncode})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--apps", action="store_true", help="then, apps on: per-user cost on a site of --app-users")
    ap.add_argument("--apps-only", action="store_true", help="only the apps-on part")
    ap.add_argument("--app-users", type=int, default=3, help="users with their apps on (keep it small: shared host)")
    ap.add_argument("--reserve-gb", type=float, default=2.0, help="memory the host keeps for itself")
    ap.add_argument("--settle-s", type=float, default=60, help="idle time before the apps' memory is read")
    args = ap.parse_args()
    if not args.apps_only:
        shape(args.users)
    if args.apps or args.apps_only:
        with_apps(args.app_users, args.reserve_gb, args.settle_s)


if __name__ == "__main__":
    main()
