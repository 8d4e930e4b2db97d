"""The operator's console with 50 users and live status: server time, against `aicommons status --json`.

One site of 50 users (3 apps each) is applied with the file-backed fakes (tests/fakeworld.py),
every status check is mapped to a loopback HTTP stand-in in its own process, and a real
`aicommons serve` answers. Measured in the same run:
- baseline: `aicommons status --json` (the same checks, what the operator waits for on a shell);
- the console page (/console: health, 50 user rows with state, container, use, last backup),
  server time from its Server-Timing header, while the portal's background sweeper re-checks
  everything every second (`--refresh 1`: requests compete with sweeps) and between sweeps;
- the JSON API's /api/users, and the portal's own sweep (`/api/status?fresh=true`).
Prints medians and the ratios. Goal: console < 200 ms server time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aicommons.ops.loopback import LoopbackHttp  # noqa: E402
from aicommons.ops.status import plan_checks  # noqa: E402
from aicommons.plan import resolve  # noqa: E402
from aicommons.spec.load import load_text  # noqa: E402

USERS = 50
ROUNDS = 15
AIC = [sys.executable, "-c",  # the real CLI on the test suite's fake world (tests/fakeworld.py)
       f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.fakeworld import main; sys.exit(main())"]
HEAD = {"X-authentik-username": "ops", "X-authentik-groups": "aicommons-operators"}


def site_text() -> str:
    users = "\n".join(f"  - {{name: user{i}, email: user{i}@example.org}}" for i in range(1, USERS + 1))
    return f"""version: 1
name: bench
domain: example.org
driver: {{kind: lxc, netns: aic-pbench}}
services: {{ollama: {{}}, qdrant: {{}}, postgres: {{}}, redis: {{}}, garage: {{}}, portal: {{}}}}
user_template:
  apps: [openwebui, n8n, jupyter]
backups:
  dir: backups
users:
{users}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stand_ins(ready, ports, stop) -> None:
    with LoopbackHttp(ports=1) as srv:  # answers 200 on any path
        ports.extend(srv.ports)
        ready.set()
        stop.wait(900)


def serve(tmp: Path, env: dict, port: int, refresh: str) -> subprocess.Popen:
    proc = subprocess.Popen(AIC + ["serve", "--listen", f"127.0.0.1:{port}", "--trusted-proxy", "127.0.0.1",
                                   "--targets", "targets.yaml", "--refresh", refresh, "--timeout", "1"],
                            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("aicommons serve did not start")


def server_ms(client: httpx.Client, url: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = client.get(url, headers=HEAD)
    wall = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    dur = float(r.headers["server-timing"].split("dur=")[1])
    return dur, wall


def measure(port: int, path: str) -> tuple[float, float, float]:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        server_ms(c, path)  # first request: imports, template compile, first resolve
        samples = [server_ms(c, path) for _ in range(ROUNDS)]
    srv = [s for s, _ in samples]
    return statistics.median(srv), max(srv), statistics.median(w for _, w in samples)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="aic-bench-portal-"))
    (tmp / "site.yaml").write_text(site_text())
    env = {k: v for k, v in os.environ.items() if k != "AICOMMONS_SECRET_KEY"}
    env.update(AICOMMONS_FAKE_DIR=str(tmp / "world"), PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    r = subprocess.run(AIC + ["apply", "--yes"], cwd=tmp, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stdout[-2000:] + r.stderr[-2000:])
    print(f"site: {USERS} users x 3 apps, applied with the fakes in {time.perf_counter() - t0:.1f} s")

    mgr = mp.Manager()
    ports, ready, stop = mgr.list(), mgr.Event(), mgr.Event()
    helper = mp.Process(target=stand_ins, args=(ready, ports, stop), daemon=True)
    helper.start()
    ready.wait(60)
    site, _ = load_text(site_text())
    checks = plan_checks(resolve(site))
    closed = free_port()  # PostgreSQL and Redis: nothing listens (refused at once: `down`, not a timeout)
    (tmp / "targets.yaml").write_text(yaml.safe_dump({
        c.address: f"127.0.0.1:{closed if c.kind in ('postgres', 'redis') else ports[0]}" for c in checks}))
    print(f"status checks: {len(checks)} (HTTP ones on a loopback stand-in; PostgreSQL and Redis refused)")

    try:
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = subprocess.run(AIC + ["status", "--json", "--targets", "targets.yaml", "--timeout", "1"],
                               cwd=tmp, env=env, capture_output=True, text=True)
            walls.append((time.perf_counter() - t0) * 1000)
            assert r.returncode in (0, 1, 2) and '"verdict"' in r.stdout, r.stderr
        cli = statistics.median(walls)
        print(f"baseline `aicommons status --json`: {cli:.0f} ms (median of 3, process start included)")

        results = {}
        sweeps = []
        for label, refresh in (("live (sweeping every 1 s)", "1"), ("between sweeps", "3600")):
            port = free_port()
            proc = serve(tmp, env, port, refresh)
            try:
                results[label] = {p: measure(port, p) for p in ("/console", "/api/users")}
                for _ in range(3):  # the portal's own sweep of the same checks
                    r = httpx.get(f"http://127.0.0.1:{port}/api/status?fresh=true", headers=HEAD, timeout=30)
                    sweeps.append(r.json()["sweep_ms"])
            finally:
                proc.terminate()
                proc.wait(30)
        for label, by_path in results.items():
            for path, (med, worst, wall) in by_path.items():
                print(f"{path:<11} {label:<27} server {med:6.1f} ms median, {worst:6.1f} ms max;"
                      f" client {wall:6.1f} ms;  status --json / server = {cli / med:5.1f}x")
        sweep = statistics.median(sweeps)
        print(f"the portal's status sweep (in process, same checks): {sweep:.0f} ms median;"
              f"  status --json / sweep = {cli / sweep:.1f}x")
        live = results["live (sweeping every 1 s)"]["/console"][0]
        print(f"goal: console < 200 ms server time with live status -> {'met' if live < 200 else 'NOT met'}"
              f" ({live:.0f} ms)")
    finally:
        stop.set()
        helper.join(30)
        mgr.shutdown()


if __name__ == "__main__":
    main()
