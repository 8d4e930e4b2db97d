"""Many hands on one host: two LXC sites side by side, read-only commands that change nothing,
every command reaching the site only from inside its namespace, and up/down repeated.

Real: the `aicommons` command (subprocesses, as operators run it, several at once), LXC
containers from the cached Debian 12 template, each site's own network namespace (aic-<name>),
NAT veth and iptables rules, PostgreSQL 15 / Redis 7 installed in their containers, Traefik.
The guard (tests/guard/sitecustomize.py, loaded through PYTHONPATH) logs and refuses any
connection to 10.0.0.0/8 made from the host's network namespace: Python sockets, libpq, and
subprocesses naming a site address. Sites are tiny (PostgreSQL, Redis, one or two users running
Jupyter, the quickest app to start, from its cached native layer). Names start with `i11`.
Skipped only when LXC cannot run here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aicommons.drivers.lxc import netns
from aicommons.spec.default import render_site_yaml
from aicommons.spec.load import load_site
from tests.test_lxc_driver import lxc_unavailable

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(lxc_unavailable() is not None, reason=f"LXC cannot run: {lxc_unavailable()}")]

AIC = str(Path(sys.executable).parent / "aicommons")
GUARD = str(Path(__file__).resolve().parents[1] / "guard")


def write_site(where: Path, name: str, users: int = 1, services=("ollama", "postgres", "redis"), apps=("jupyter",)) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    text = render_site_yaml(users=users, driver="lxc", name=name, services=list(services), domain="example.org")
    text = text.replace("  apps: [openwebui, n8n, jupyter, code-server, big-agi, kotaemon, chainforge, flowise]",
                        f"  apps: [{', '.join(apps)}]")
    text = text.replace("resources: {memory_mb: 8192, cores: 4, disk_gb: 100}", "resources: {memory_mb: 512, cores: 1, disk_gb: 4}")
    if not services:
        text = text.replace("services:\n", "services: {}\n", 1)
    (where / "site.yaml").write_text(text)
    return where


def cli(where: Path, *args: str, guard: Path | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("AICOMMONS_FAKE_DIR", None)
    if guard is not None:
        env.update(PYTHONPATH=GUARD, AICOMMONS_GUARD_NETS="10.0.0.0/8", AICOMMONS_GUARD_LOG=str(guard))
    return subprocess.run([AIC, *args], cwd=where, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def driver_of(where: Path):
    from aicommons.drivers.lxc.driver import LxcDriver

    return LxcDriver.from_site(load_site(where / "site.yaml")[0], join=False)


def host_state() -> dict:
    """What a read-only command must leave exactly as it was."""
    sh = lambda *a: subprocess.run(a, capture_output=True, text=True).stdout  # noqa: E731
    rules = [line for line in sh("iptables-save").splitlines() if not line.startswith(("#", ":"))]
    return {"netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
            "links": sorted(line.split(":")[1].strip() for line in sh("ip", "-o", "link").splitlines()),
            "rules": sorted(rules)}


def ns_pids(ns: str) -> set[int]:
    if not netns.exists(ns):
        return set()
    return {int(p) for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()}


def leftovers(where: Path) -> list[str]:
    d = driver_of(where)
    found = []
    if netns.exists(d.ns):
        found.append(f"namespace {d.ns}")
    if d.net.host_veth in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout:
        found.append(f"veth {d.net.host_veth}")
    if d.net.comment in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout:
        found.append(f"rules {d.net.comment}")
    if str(d.lxcpath) in Path("/proc/mounts").read_text():
        found.append(f"mounts under {d.lxcpath}")
    if d.lxcpath.exists() and any(d.lxcpath.iterdir()):
        found.append(f"files in {d.lxcpath}: {sorted(p.name for p in d.lxcpath.iterdir())}")
    return found


def force_down(where: Path) -> None:
    if (where / "site.yaml").exists():
        cli(where, "down", "--yes", "--purge")
        driver_of(where).down()


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    base = tmp_path_factory.mktemp("hosts")
    a, b = write_site(base / "a", "i11a"), write_site(base / "b", "i11b")
    for w in (a, b):
        if leftovers(w):
            pytest.fail(f"{w.name}: a previous run left {leftovers(w)}; run `aicommons down --purge` there")
    yield a, b
    for w in (a, b):
        force_down(w)


def test_plan_changes_nothing_on_the_host(two_sites, tmp_path):
    a, _ = two_sites
    before = host_state()
    for args in (("plan",), ("validate",), ("render", "--out", str(tmp_path / "r")), ("users", "list"),
                 ("users", "show", "user1")):
        r = cli(a, *args)
        assert r.returncode == 0, (args, r.stderr[-2000:])
    assert host_state() == before
    assert not netns.exists(driver_of(a).ns)


def test_two_sites_side_by_side_while_plans_run(two_sites):
    """`up` of site A with `plan` of A and B running in a loop all along (from before A has any
    container: the window in which a plan used to tear the namespace down and kill what was in
    it), then B up beside it; both keep running."""
    a, b = two_sites
    stop, plans = threading.Event(), []

    def plan_loop():
        while not stop.is_set():
            for w in (a, b):
                plans.append(cli(w, "plan", timeout=600))

    loop = threading.Thread(target=plan_loop)
    loop.start()
    try:
        ra = cli(a, "up", "--yes")
        rb = cli(b, "up", "--yes")
    finally:
        stop.set()
        loop.join()
    assert ra.returncode == 0, ra.stdout[-3000:] + ra.stderr[-3000:]
    assert rb.returncode == 0, rb.stdout[-3000:] + rb.stderr[-3000:]
    assert len(plans) >= 2 and all(p.returncode == 0 for p in plans), [p.stderr[-500:] for p in plans
                                                                       if p.returncode][:3]
    da, db = driver_of(a), driver_of(b)
    assert da.ns != db.ns and da.net.host_veth != db.net.host_veth and da.lxcpath != db.lxcpath
    assert netns.link_for(da.net) != netns.link_for(db.net)
    for d in (da, db):  # same addresses, each in its own namespace
        running = {c.ctid: c.status for c in d.list_containers()}
        assert {102, 103, 200} <= {i for i, st in running.items() if st == "running"}, (d.ns, running)
    # A plan of a running site joins its namespace to read it, and changes nothing there either.
    before, pids = host_state(), ns_pids(da.ns)
    assert cli(a, "plan").returncode == 0
    assert host_state() == before and ns_pids(da.ns) == pids


def test_a_second_site_of_the_same_name_cannot_take_the_first_ones_containers(two_sites, tmp_path):
    """A copy of site A in another directory, same name: same namespace and lxcpath by default.
    Its `up` and strict `plan` are refused before any change; A keeps running as it was."""
    a, _ = two_sites
    copy = write_site(tmp_path / "copy", "i11a")
    da = driver_of(a)
    before, pids = {c.ctid: c.status for c in da.list_containers()}, ns_pids(da.ns)
    for args in (("up", "--yes"), ("plan", "--detailed-exitcode"), ("users", "list")):
        r = cli(copy, *args, timeout=600)
        if args[0] == "users":  # reads site.yaml and the state only: allowed, changes nothing
            assert r.returncode == 0, r.stderr[-2000:]
            continue
        assert r.returncode == 1 and f"belong to the site in {a.resolve()}" in r.stderr, (args, r.stderr[-2000:])
    assert {c.ctid: c.status for c in da.list_containers()} == before and ns_pids(da.ns) == pids


def test_every_command_reaches_the_site_only_from_inside(two_sites, tmp_path):
    a, b = two_sites
    log = tmp_path / "guard.log"
    commands = [
        ("validate",), ("plan",), ("render", "--out", str(tmp_path / "rendered")), ("status",),
        ("users", "list"), ("users", "show", "user1"), ("users", "add", "i11x", "--email", "i11x@example.org"),
        ("users", "suspend", "user1"),
        ("users", "resume", "user1"), ("audit", "isolation"), ("backup", "run"), ("backup", "list"),
        ("users", "remove", "i11x", "--purge"), ("state", "show"), ("secrets", "list"), ("apply", "--yes"),
    ]
    codes = {}
    for args in commands:
        r = cli(a, *args, guard=log)
        codes[" ".join(args)] = r.returncode
        assert "internal error" not in r.stderr, (args, r.stderr[-2000:])
        assert not log.exists(), (args, log.read_text(), r.stderr[-1500:])
    # status/audit may say 1 for what this host cannot run; nothing else may fail
    bad = {c: rc for c, rc in codes.items() if rc != 0 and not c.startswith(("status", "audit"))}
    assert not bad, bad
    # the guard is live: the same dial from the host is caught
    r = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('10.0.5.102', 5432), 2)"],
                       env={**os.environ, "PYTHONPATH": GUARD, "AICOMMONS_GUARD_NETS": "10.0.0.0/8",
                            "AICOMMONS_GUARD_LOG": str(log)}, capture_output=True, text=True)
    assert r.returncode != 0 and "10.0.5.102:5432" in log.read_text()
    log.unlink()
    r = cli(b, "down", "--yes", "--purge", guard=log)
    assert r.returncode == 0 and not log.exists(), r.stderr[-2000:]
    assert leftovers(b) == []
    assert {c.ctid for c in driver_of(a).list_containers() if c.status == "running"} >= {102, 103, 200}  # A unharmed


def test_up_then_down_purge_ten_times_leaves_nothing(tmp_path):
    """The race of parallel deletes (one tearing down the site directory while another was still
    deleting) is gone: ten rounds of up and down --purge with parallelism, nothing left, no failure."""
    where = write_site(tmp_path / "c", "i11c", users=3, services=(), apps=())
    if leftovers(where):
        pytest.fail(f"a previous run left {leftovers(where)}")
    try:
        for i in range(10):
            r = cli(where, "up", "--yes", "--parallelism", "4")
            assert r.returncode == 0, (i, r.stdout[-3000:], r.stderr[-3000:])
            r = cli(where, "down", "--yes", "--purge", "--parallelism", "4")
            assert r.returncode == 0, (i, r.stdout[-3000:], r.stderr[-3000:])
            assert leftovers(where) == [], i
    finally:
        force_down(where)
