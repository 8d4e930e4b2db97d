"""Crash safety and locking: real processes killed with SIGKILL, then a normal apply.

Real: subprocesses running the engine, SIGKILL at random points, the SQLite state, the lock
(a dead holder detected by pid + process start time), secrets encryption. Simulated: the
compute driver and tenancy back ends (file-backed fakes that survive the kill, like a real
world would), slowed down so each kill lands mid-apply.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aicommons.state import StateStore, default_path
from aicommons.state.lock import LockHeld
from tests.test_engine_support import apply, edit_site, fakes, plan, write_site

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, io
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.test_engine_support import apply
print("ready", flush=True)
r = apply(Path({site!r}), Path({world!r}), driver_variants={driver_variants}, delay={delay},
          backend_variants={backend_variants},
          out=sys.stdout, parallelism=3, lock_timeout={lock_timeout})
print("finished", r.ok, flush=True)
"""


BACKENDS = ["postgres", "redis", "qdrant", "s3"]
SLOW_BACKENDS = {n: {"*": "slow"} for n in BACKENDS}


def child(site: Path, world: Path, delay: float = 0.02, lock_timeout: float = 0.0, driver_variants=None,
          backend_variants=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AICOMMONS_SECRET_KEY", None)
    code = CHILD.format(root=str(ROOT), site=str(site), world=str(world), delay=delay, lock_timeout=lock_timeout,
                        driver_variants=driver_variants or {"*": "slow"},
                        backend_variants=SLOW_BACKENDS if backend_variants is None else backend_variants)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.delenv("AICOMMONS_SECRET_KEY", raising=False)
    monkeypatch.delenv("AICOMMONS_FAKE_DIR", raising=False)
    return write_site(tmp_path / "site.yaml", users=4)


def wait_for(site: Path, query: str = "SELECT pid FROM lock") -> None:
    """Until the child holds the lock (or, with another query, has got that far)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if default_path(site).exists():
            st = StateStore.open(default_path(site))
            held = st._read(query)
            st.close()
            if held:
                return
        time.sleep(0.05)
    raise AssertionError("the child never got there")


def check_converged(site: Path, world: Path, seen_secrets: dict) -> None:
    p = plan(site, world)
    assert p.empty, [(c.address, c.action, c.reason) for c in p.changes if c.action != "no-op"]
    driver, backends = fakes(world)
    live = driver.list_containers()
    # no orphan: the world holds exactly the planned containers, tenants and routes
    assert sorted(c.ctid for c in live) == sorted(c.ctid for c in p.resolved.containers)
    assert len({c.ip for c in live}) == len(live)
    users = {t.user for t in p.resolved.tenants}
    for b in backends:
        assert set(b.observe()) <= users
    files = {p.name for p in (world / "traefik").iterdir() if not p.name.startswith(".")}
    assert files == {c.traefik_file for c in p.resolved.containers
                     if any(r.traefik_file == c.traefik_file for r in p.resolved.routes)}
    st = StateStore.open(default_path(site))
    try:
        allocs = [a for a in st.allocations() if a.status == "active"]
        assert sorted(a.user for a in allocs) == sorted(users)  # no duplicate allocation
        assert len({a.ip for a in allocs}) == len(allocs)
        assert {a.user: a.ip for a in allocs} == {t.user: t.ip for t in p.resolved.tenants}
        now = {(s, k): st.secrets().get(s, k) for s, k, _ in st.secrets().known()}
        for key, value in seen_secrets.items():  # nothing re-keyed
            assert now[key] == value, f"secret {key} changed across a crash"
        seen_secrets.update(now)
    finally:
        st.close()


def test_sigkill_at_random_points_then_apply_converges(site, tmp_path):
    world = tmp_path / "world"
    rng = random.Random(int(os.environ.get("AICOMMONS_CRASH_SEED", "4")))
    seen: dict = {}
    user_sets = [["user1", "user2", "user3", "user4"], ["user1", "user3", "user4", "ann"],
                 ["user1", "user2", "user3", "user4", "ann", "bob"], ["user2", "bob"]]
    killed_mid_run = mid_step = 0
    for i in range(20):
        names = user_sets[i % len(user_sets)] + [f"new{i}"]  # a user this very run creates
        edit_site(site, lambda d, names=names: d.update(users=[{"name": n, "email": f"{n}@example.org"} for n in names]))
        # Killed at a point the run reaches for sure, not after a time: new{i}'s tenant steps never
        # return, so once one has started the run is mid-step; the other steps (in parallel, slow)
        # are wherever they are by then.
        blocked = {n: {"*": "slow", f"new{i}": "never"} for n in rng.sample(BACKENDS, rng.randint(1, 4))}
        p = child(site, world, backend_variants={**SLOW_BACKENDS, **blocked})
        wait_for(site, f"SELECT 1 FROM journal WHERE address LIKE 'tenant.%.new{i}' AND status = 'started' "
                       "AND run_id = (SELECT MAX(run_id) FROM journal)")
        finished = p.poll() is not None
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed_mid_run += not finished
        if i % 2:  # the operator drops the new user before anything converged: its leftovers must go
            edit_site(site, lambda d, i=i: d.update(users=[u for u in d["users"] if u["name"] != f"new{i}"]))
        st = StateStore.open(default_path(site))
        mid_step += bool(st.unfinished_steps())  # killed between "started" and its outcome
        st.close()
        r = apply(site, world, out=io.StringIO())
        assert r.ok, [(o.step, o.detail) for o in r.errors]
        check_converged(site, world, seen)
    print(f"killed mid-run {killed_mid_run}/20, mid-step {mid_step}/20")
    assert killed_mid_run == 20 and mid_step == 20  # every kill landed during an apply, mid-step


def test_second_apply_is_refused_naming_the_holder_then_waits(site, tmp_path):
    world = tmp_path / "world"
    p = child(site, world, delay=0.05)
    try:
        wait_for(site)
        with pytest.raises(LockHeld, match=rf"pid {p.pid}"):
            apply(site, world, out=io.StringIO())
        r = apply(site, world, out=io.StringIO(), lock_timeout=120)  # waits for the first to finish
        assert r.ok
        out, _ = p.communicate(timeout=120)
        assert "finished True" in out
    finally:
        p.kill()
        p.wait()
    check_converged(site, world, {})


def test_dead_holders_lock_is_broken_and_said_so(site, tmp_path):
    world = tmp_path / "world"
    p = child(site, world, delay=0.05)
    wait_for(site, "SELECT 1 FROM journal")
    p.send_signal(signal.SIGKILL)
    p.wait()
    out = io.StringIO()
    r = apply(site, world, out=out)
    assert r.ok
    assert "broke the lock of a dead process" in out.getvalue() and f"pid {p.pid}" in out.getvalue()
    assert "was interrupted during" in out.getvalue()
    st = StateStore.open(default_path(site))
    assert [r.outcome for r in st.runs()] == ["ok", "interrupted"]
    assert st.unfinished_steps() and st.runs()[1].summary["interrupted_steps"]


@pytest.mark.parametrize("where", ["container", "postgres", "redis"])
def test_killed_right_after_the_world_changed_then_user_dropped(site, tmp_path, where):
    """Deterministic kill points: the world changed, the state never heard, and the user is gone next."""
    world = tmp_path / "world"
    assert apply(site, world, out=io.StringIO()).ok
    edit_site(site, lambda d: d["users"].append({"name": "late", "email": "late@example.org"}))
    ctid = plan(site, world).resolved.tenant("late").ctid
    driver_variants = {ctid: "crash"} if where == "container" else {}
    backend_variants = {where: {"late": "crash"}} if where != "container" else {}
    p = child(site, world, driver_variants=driver_variants, backend_variants=backend_variants)
    assert p.wait(timeout=120) == -signal.SIGKILL
    edit_site(site, lambda d: d.update(users=[u for u in d["users"] if u["name"] != "late"]))
    out = io.StringIO()
    r = apply(site, world, out=out)
    assert r.ok, [(o.step, o.detail) for o in r.errors]
    assert "was interrupted" in out.getvalue()
    check_converged(site, world, {})
