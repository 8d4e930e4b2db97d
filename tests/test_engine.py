"""Engine: plan against reality and apply, driven by the file-backed fake driver and fake back ends.

Real: the state store (SQLite on disk), secrets encryption, the planner, the DAG runner with its
threads, the Traefik file target (a real directory), the site files and the resolver.
Simulated: the compute driver and the tenancy back ends (drivers/fake.py, tenancy/fake.py,
which keep their world in JSON files and fail on purpose: slow, fail, flaky, never).
"""

from __future__ import annotations

import io
import json

import pytest

from aicommons.engine.api import StalePlan, save_plan
from aicommons.state import StateStore, default_path
from tests.test_engine_support import apply, edit_site, fakes, plan, write_site


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.delenv("AICOMMONS_SECRET_KEY", raising=False)
    monkeypatch.delenv("AICOMMONS_FAKE_DIR", raising=False)
    return write_site(tmp_path / "site.yaml", users=3)


@pytest.fixture
def fake_dir(tmp_path):
    return tmp_path / "world"


def state_of(site):
    return StateStore.open(default_path(site))


def test_apply_twice_second_plan_is_empty(site, fake_dir):
    first = plan(site, fake_dir)
    assert not first.empty and first.counts()["create"] > 0
    r = apply(site, fake_dir, out=io.StringIO())
    assert r.ok, r.errors
    second = plan(site, fake_dir)
    assert second.empty, [c for c in second.changes if c.action != "no-op"]
    driver, backends = fakes(fake_dir)
    assert {c.ctid for c in driver.list_containers()} == {c.ctid for c in first.resolved.containers}
    assert all(c.status == "running" for c in driver.list_containers())
    assert {u for b in backends for u in b.observe()} == {"user1", "user2", "user3"}
    assert sorted(p.name for p in (fake_dir / "traefik").iterdir()) == sorted(
        {c.traefik_file for c in first.resolved.containers if any(r.ctid == c.ctid for r in first.resolved.routes)})
    env = fake_dir / "ct" / "200" / "opt/aicommons/user1/.env"
    assert env.stat().st_mode & 0o777 == 0o600
    assert any("compose" in " ".join(argv) for _, argv in driver.exec_log())


def test_changes_carry_reasons_and_drift_is_seen(site, fake_dir):
    apply(site, fake_dir, out=io.StringIO())
    driver, _ = fakes(fake_dir)
    driver.stop(201)
    (fake_dir / "traefik" / "205202.yml").write_text("tampered: true\n")
    p = plan(site, fake_dir)
    got = {c.address: (c.action, c.reason) for c in p.changes if c.action != "no-op"}
    assert got["container.201"] == ("update", "is stopped; start it")
    assert got["traefik.file.205202"] == ("update", "content differs")
    assert apply(site, fake_dir, out=io.StringIO()).ok
    assert plan(site, fake_dir).empty


def test_one_users_failure_does_not_stop_the_others(site, fake_dir):
    out = io.StringIO()
    r = apply(site, fake_dir, out=out, driver_variants={201: "fail"})
    assert not r.ok
    status = {k: o.status for k, o in r.outcomes.items()}
    assert status["container.201"] == "failed"
    assert status["bundle.user2"] == "skipped" and status["traefik.file.205201"] == "skipped"
    assert status["bundle.user1"] == "ok" and status["bundle.user3"] == "ok"
    text = out.getvalue()
    assert "failed: container.201" in text and "skipped: bundle.user2" in text  # all errors listed at the end
    r2 = apply(site, fake_dir, out=io.StringIO())
    assert r2.ok and plan(site, fake_dir).empty


def test_backend_failure_skips_only_that_users_bundle(site, fake_dir):
    r = apply(site, fake_dir, out=io.StringIO(), backend_variants={"redis": {"user3": "fail"}})
    status = {k: o.status for k, o in r.outcomes.items()}
    assert status["tenant.redis.user3"] == "failed" and status["bundle.user3"] == "skipped"
    assert status["bundle.user2"] == "ok" and status["tenant.postgres.user3"] == "ok"


def test_phase_gate_failed_core_service_skips_later_phases(site, fake_dir):
    r = apply(site, fake_dir, out=io.StringIO(), driver_variants={102: "fail"})  # postgres, phase 1
    status = {k: o.status for k, o in r.outcomes.items()}
    assert status["container.102"] == "failed"
    assert status["container.100"] == "ok"  # same phase: not gated
    later = [k for k, s in r.plan.steps.items() if s.phase > 1]
    assert later and all(status[k] == "skipped" for k in later)


def test_flaky_is_retried_and_never_finishing_times_out(site, fake_dir):
    r = apply(site, fake_dir, out=io.StringIO(), driver_variants={200: "flaky", 202: "never"}, step_timeout=1.0)
    status = {k: o.status for k, o in r.outcomes.items()}
    assert status["container.200"] == "ok" and r.outcomes["container.200"].attempts == 2
    assert status["container.202"] == "failed" and "did not finish" in r.outcomes["container.202"].detail
    assert status["bundle.user3"] == "skipped" and status["bundle.user2"] == "ok"


def test_saved_plan_is_carried_out_exactly_and_stale_one_refused(site, fake_dir, tmp_path):
    p = plan(site, fake_dir)
    save_plan(p, tmp_path / "plan.json")
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert {"containers", "routes", "changes", "fingerprint"} <= set(saved)
    r = apply(site, fake_dir, plan_file=tmp_path / "plan.json", out=io.StringIO())
    assert r.ok and set(r.outcomes) == {s["id"] for s in saved["steps"]}
    with pytest.raises(StalePlan):  # state moved on since the plan was made
        apply(site, fake_dir, plan_file=tmp_path / "plan.json", out=io.StringIO())
    save_plan(plan(site, fake_dir), tmp_path / "plan2.json")
    edit_site(site, lambda d: d["users"].append({"name": "dora", "email": "dora@example.org"}))
    with pytest.raises(StalePlan):  # site file changed
        apply(site, fake_dir, plan_file=tmp_path / "plan2.json", out=io.StringIO())


def test_slots_are_stable_and_removed_users_keep_theirs(site, fake_dir):
    apply(site, fake_dir, out=io.StringIO())
    edit_site(site, lambda d: d.update(users=[u for u in d["users"] if u["name"] != "user1"]))
    p = plan(site, fake_dir)
    assert {c.address: c.action for c in p.changes}["container.200"] == "delete"
    assert p.resolved.tenant("user2").ip == "10.0.5.201"  # nobody moves
    assert apply(site, fake_dir, out=io.StringIO()).ok
    st = state_of(site)
    assert {a.user: a.status for a in st.allocations()}["user1"] == "removed"
    assert st.held_slots()["user1"] == "10.0.5.200"
    _, backends = fakes(fake_dir)
    assert "user1" not in backends[0].observe()
    assert "user1" in json.loads(backends[0].file.read_text())["archived"]  # archived, not purged
    assert (fake_dir / "archive" / "200" / "files" / "opt/aicommons/user1/.env").exists()
    edit_site(site, lambda d: d["users"].append({"name": "erin", "email": "erin@example.org"}))
    p = plan(site, fake_dir)
    assert p.resolved.tenant("erin").ip == "10.0.5.203"  # user1's slot is not reused before a purge
    st.set_allocation_status("user1", "purged")
    assert plan(site, fake_dir).resolved.tenant("erin").ip == "10.0.5.200"


def test_rotation_reaches_back_end_and_every_consumer_in_one_apply(site, fake_dir):
    apply(site, fake_dir, out=io.StringIO())
    env = fake_dir / "ct" / "200" / "opt/aicommons/user1/.env"
    _, backends = fakes(fake_dir)
    pg = backends[0]
    before_env, before_digest = env.read_text(), pg.observe_record("user1")["secret"]
    st = state_of(site)
    old = st.secrets().get("user1", "postgres_password")
    st.secrets().rotate("user1", "postgres_password")
    p = plan(site, fake_dir)
    todo = {s.id: s.reason for s in p.steps.values()}
    assert todo == {"tenant.postgres.user1": "secret rotated",
                    "bundle.user1": "files changed (configuration or a rotated secret)"}
    assert apply(site, fake_dir, out=io.StringIO()).ok
    new = st.secrets().get("user1", "postgres_password")
    assert new != old and new in env.read_text() and env.read_text() != before_env
    assert pg.observe_record("user1")["secret"] != before_digest
    assert pg.verify(p.resolved.tenant("user1"), {"postgres_password": new}) == []
    assert plan(site, fake_dir).empty


def test_down_removes_what_the_site_created(site, fake_dir):
    (fake_dir / "traefik").mkdir(parents=True)
    (fake_dir / "traefik" / "other-tool.yml").write_text("http: {}\n")
    apply(site, fake_dir, out=io.StringIO())
    r = apply(site, fake_dir, out=io.StringIO(), destroy=True, purge=True)
    assert r.ok, r.errors
    driver, backends = fakes(fake_dir)
    assert driver.list_containers() == [] and all(b.observe() == {} for b in backends)
    assert [p.name for p in (fake_dir / "traefik").iterdir()] == ["other-tool.yml"]  # not ours: kept
    assert state_of(site).held_slots() == {}
    done = [e[1] for e in state_of(site).journal_entries(r.run_id) if e[3] == "ok"]
    assert done.index("container.102") > max(done.index(a) for a in done if a.startswith("tenant.postgres."))


def test_targets_limit_the_run(site, fake_dir):
    r = apply(site, fake_dir, out=io.StringIO(), targets={"user2"})
    owners = {r.plan.steps[k].owner for k in r.outcomes}
    assert "user2" in owners and "user1" not in owners and "user3" not in owners
    assert r.ok



def test_driver_hooks_secrets_binding_and_no_traefik_target(site, fake_dir):
    from aicommons.drivers.fake import FakeDriver
    from aicommons.engine.api import plan_site
    from aicommons.tenancy.fake import fake_backends
    from tests.test_engine_support import test_renderer

    class NoTraefik(FakeDriver):
        bound = None

        def bind_secrets(self, lookup):
            NoTraefik.bound = lookup

        def traefik_target(self):
            return None

    p = plan_site(site, driver=NoTraefik(fake_dir), backends=fake_backends(fake_dir), renderer=test_renderer)
    assert not [s for s in p.steps if s.startswith("traefik.")] and any("Traefik" in n for n in p.notes)
    assert callable(NoTraefik.bound) and hasattr(NoTraefik.bound, "rotate")  # the state's secret store


def test_container_data_is_never_destroyed_unarchived(site, fake_dir):
    from aicommons.drivers.fake import FakeDriver
    from aicommons.engine.api import apply_site
    from aicommons.tenancy.fake import fake_backends
    from tests.test_engine_support import test_renderer

    class NoArchiveDriver(FakeDriver):
        archive = None  # this driver cannot keep a copy

    apply(site, fake_dir, out=io.StringIO())
    edit_site(site, lambda d: d.update(users=d["users"][:2]))
    kw = dict(backends=fake_backends(fake_dir), renderer=test_renderer, out=io.StringIO())
    r = apply_site(site, driver=NoArchiveDriver(fake_dir), **kw)
    assert r.outcomes["container.202"].status == "failed" and "--purge" in r.outcomes["container.202"].detail
    assert FakeDriver(fake_dir).get(202).status == "stopped"  # kept
    assert apply_site(site, driver=NoArchiveDriver(fake_dir), purge=True, **kw).ok
    assert FakeDriver(fake_dir).get(202) is None


def test_slot_of_a_user_gone_before_its_container_existed_is_released(site, fake_dir):
    apply(site, fake_dir, out=io.StringIO())
    st = state_of(site)
    st.allocate("ghost", "10.0.5.240", 240)  # as a run killed between allocating and creating leaves it
    p = plan(site, fake_dir)
    assert {s.id: s.action for s in p.steps.values()} == {"allocation.ghost": "delete"}
    assert apply(site, fake_dir, out=io.StringIO()).ok
    assert {a.user: a.status for a in st.allocations()}["ghost"] == "removed"
    assert plan(site, fake_dir).empty

