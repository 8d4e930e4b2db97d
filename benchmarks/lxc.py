"""Time to the first working user on plain LXC (template cached and not), and per additional user.

Runs the real CLI (`aicommons up`, `users add`, `down`) on a small site — PostgreSQL, Redis and
one user app — in its own namespace (`aicbench`), so it never touches an `aicommons` site. "Working"
means: from inside the user's container, the user's own PostgreSQL credentials open its database
on 10.0.5.102. The baseline is the cached first user, measured in the same run; the uncached
case builds a fresh template in a temporary cache directory (debootstrap + apt, minutes).

    .venv/bin/python benchmarks/lxc.py [--no-uncached] [--users N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AIC = str(Path(sys.executable).parent / "aicommons")
SITE = """version: 1
name: bench
domain: bench.example.org
network:
  traefik: {{dynamic_dir: {d}/dynamic}}
driver: {{kind: lxc, netns: aicbench, lxcpath: {d}/lxc, cache_dir: {cache}}}
services: {{postgres: {{}}, redis: {{}}, ollama: {{}}}}  # n8n needs ollama: its recipe is skipped here
user_template: {{apps: [n8n]}}
users: [{{name: user1}}]
"""


def cli(d: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIC, *args, "-f", str(d / "site.yaml")], cwd=d, capture_output=True, text=True,
                          timeout=1800, stdin=subprocess.DEVNULL)


def works(d: Path, user: str, ctid: int) -> bool:
    from aicommons.drivers.lxc.driver import LxcDriver
    from aicommons.engine.api import key_source, open_state
    from aicommons.spec.load import load_site

    site = load_site(d / "site.yaml")[0]
    st = open_state(d / "site.yaml")
    try:
        pw = st.secrets(key_source(site, st, d / "site.yaml")).get(user, "postgres_password")
    finally:
        st.close()
    drv = LxcDriver.from_site(site, join=False)
    if drv._status(ctid) != "running":
        return False
    db = f"n8n_{user.replace('-', '_')}"
    res = drv.exec(ctid, ["env", f"PGPASSWORD={pw}", "psql", "-h", "10.0.5.102", "-U", f"u_{user}", "-d", db,
                          "-Atc", "select 1"])
    return res.ok and res.stdout.strip() == "1"


def run(cache: str, users: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="aicbench-") as tmp:
        d = Path(tmp)
        (d / "site.yaml").write_text(SITE.format(d=d, cache=cache))
        try:
            t0 = time.monotonic()
            r = cli(d, "up", "--yes")  # exits 1 here: the Docker bundle step cannot run on this host
            if not works(d, "user1", 200):
                raise SystemExit(f"user1 does not work after `up`:\n{(r.stdout + r.stderr)[-2000:]}")
            first = time.monotonic() - t0
            more = []
            for i in range(2, users + 1):
                t0 = time.monotonic()
                cli(d, "users", "add", f"user{i}")
                if not works(d, f"user{i}", 199 + i):
                    raise SystemExit(f"user{i} does not work after `users add`")
                more.append(time.monotonic() - t0)
            return first, more
        finally:
            cli(d, "down", "--yes", "--purge")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-uncached", action="store_true", help="skip the template build (saves minutes)")
    ap.add_argument("--users", type=int, default=3)
    args = ap.parse_args()
    from aicommons.drivers.lxc import template

    template.ensure("/var/cache/aicommons", "http://deb.debian.org/debian")  # cached before the baseline
    first, more = run("/var/cache/aicommons", args.users)
    per = sum(more) / len(more) if more else float("nan")
    print(f"first working user, template cached:   {first:7.1f} s  (baseline 1.00)")
    if not args.no_uncached:
        cache = tempfile.mkdtemp(prefix="aicbench-cache-", dir="/var/tmp")
        try:
            cold, _ = run(cache, 1)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"first working user, template built:    {cold:7.1f} s  ({cold / first:.2f} x baseline)")
    print(f"each additional user (`users add`):    {per:7.1f} s  ({per / first:.2f} x baseline; n={len(more)})")


if __name__ == "__main__":
    main()
