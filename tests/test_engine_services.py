"""Shared containers' rendered configuration (`service.<host>` steps) and the site's Ollama
models (`ollama.models`), applied by the engine.

Real: the engine, state store, the real renderer (render_site), HTTP to a loopback Ollama
stand-in. Simulated: the compute driver (the file-backed FakeDriver: pushed files land under
its directory, exec calls are recorded), tenancy back ends (file-backed fakes), Ollama
(tests/standins/http.py).
"""

from __future__ import annotations

import pytest

from aicommons.drivers.fake import FakeDriver
from aicommons.engine.api import apply_site, plan_site
from aicommons.render import render_site
from aicommons.tenancy.fake import fake_backends
from tests.standins.http import ollama
from tests.test_engine_support import edit_site, write_site


def _site(tmp_path, models=()):
    site = write_site(tmp_path / "site.yaml", users=2)

    def fn(d):
        d.setdefault("services", {})["ollama"] = {}
        d["services"].pop("llama-server", None)  # Ollama takes the model server's address instead
        d["models"] = list(models)
    edit_site(site, fn)
    return site


def _kw(tmp_path, renderer=render_site, **drv):
    return dict(driver=FakeDriver(tmp_path / "fake", **drv), backends=fake_backends(tmp_path / "fake"),
                renderer=renderer)


def _pushed(tmp_path, ctid: int, host: str) -> dict[str, int]:
    root = tmp_path / "fake" / "ct" / str(ctid) / "opt" / "aicommons" / host
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file()}


def _runs(driver, ctid: int) -> list[str]:
    """What ran in one container: `install.sh` or the config-apply script's last line."""
    out = []
    for c, argv in driver.exec_log():
        if c == ctid:
            out.append("install.sh" if argv[-1].endswith("/install.sh") else argv[-1].strip().splitlines()[-1])
    return out


def test_service_files_are_pushed_installed_and_a_second_plan_is_a_noop(tmp_path):
    site, kw = _site(tmp_path), _kw(tmp_path)
    first = plan_site(site, **kw)
    shared = {c.hostname: c for c in first.resolved.containers if c.role == "shared"}
    services = {i: s for i, s in first.steps.items() if s.kind == "service"}
    assert set(services) == {f"service.{h}" for h in shared}
    pg = shared["postgres"]
    assert f"container.{pg.ctid}" in services["service.postgres"].deps
    assert all(s.action == "create" for s in services.values())

    result = apply_site(site, **kw)
    assert result.ok, [(o.step, o.detail) for o in result.errors]
    files = _rendered(site, tmp_path)
    for host, c in shared.items():
        want = {p.split("/", 2)[2]: f.mode for p, f in files.items() if p.startswith(f"services/{host}/")}
        if host == "portal":  # on an SQLite state it is not deployed (tests/test_portal_proxmox.py)
            want = {}
        if host == "gateway":  # works on no state: deployed from this checkout's wheel on the lock
            want.update({"aicommons-0.1.0-py3-none-any.whl": 0o644, "aicommons-wheel.txt": 0o644,
                         "requirements.lock": 0o644, "runs-from.json": 0o644})
            env = (tmp_path / "fake/ct" / str(c.ctid) / "etc/aicommons/gateway.env")
            assert env.stat().st_mode & 0o777 == 0o600 and "AICOMMONS_SECRET_KEY" not in env.read_text()
            assert "AICOMMONS_STATE" not in env.read_text() and "user=gateway" in env.read_text()
        assert _pushed(tmp_path, c.ctid, host) == want  # every rendered file, with its mode
    assert _pushed(tmp_path, shared["redis"].ctid, "redis")["users.acl"] == 0o600
    runs = _runs(kw["driver"], pg.ctid)
    assert runs[0] == "install.sh" and runs[1].startswith("systemctl restart postgresql &&") and len(runs) == 2
    hba = (tmp_path / "fake/ct" / str(pg.ctid) / "opt/aicommons/postgres/pg_hba.conf").read_text()
    assert hba == files["services/postgres/pg_hba.conf"].content

    again = plan_site(site, **kw)
    assert again.empty, {i: s.reason for i, s in again.steps.items()}


def _rendered(site, tmp_path) -> dict:
    """The site's files, rendered with the secrets the state holds (independently of the engine)."""
    from aicommons.engine.api import Session

    s = Session(site, driver=FakeDriver(tmp_path / "fake"), backends=[])
    try:
        return render_site(s.resolved, s.secrets)
    finally:
        s.close()


def test_a_changed_pg_hba_updates_only_postgres_and_reapplies_only_it(tmp_path):
    site, kw = _site(tmp_path), _kw(tmp_path)
    assert apply_site(site, **kw).ok
    pg = next(c for c in plan_site(site, **kw).resolved.containers if c.hostname == "postgres")
    before = len(kw["driver"].exec_log())

    def renderer(resolved, secrets):
        files = render_site(resolved, secrets)
        f = files["services/postgres/pg_hba.conf"]
        files[f.path] = type(f)(f.path, f.content + "host all x 10.0.5.7/32 scram-sha-256\n", f.mode)
        return files

    kw2 = {**kw, "renderer": renderer}
    plan = plan_site(site, **kw2)
    assert {c.address: c.action for c in plan.changes if c.action != "no-op"} == {"service.postgres": "update"}
    assert "pg_hba.conf" in plan.steps["service.postgres"].reason
    result = apply_site(site, **kw2)
    assert result.ok and set(result.outcomes) == {"service.postgres"}
    ran = kw["driver"].exec_log()[before:]
    assert len(ran) == 1 and ran[0][0] == pg.ctid  # no install.sh again, only the config apply
    script = ran[0][1][-1]
    # a pg_hba change is a reload: a restart would cut every tenant's connections
    assert "pg_hba.conf" in script and "aicommons.conf" not in script
    assert "reload postgresql" in script and "restart" not in script
    assert "10.0.5.7/32" in (tmp_path / "fake/ct" / str(pg.ctid) / "opt/aicommons/postgres/pg_hba.conf").read_text()
    assert plan_site(site, **kw2).empty


def test_a_driver_that_installs_services_gets_only_their_rendered_config(tmp_path):
    """One pg_hba.conf / users.acl for every driver: the LXC driver installs PostgreSQL and Redis
    by its own recipes, the engine still delivers the site's rendered config files to them (and
    nothing to the services the driver skips, and never install.sh)."""
    class Configuring(FakeDriver):
        configures_services = True

        def skipped_services(self, resolved):
            return {"qdrant": "not from the mirror"}

    site = _site(tmp_path)
    kw = {**_kw(tmp_path), "driver": Configuring(tmp_path / "fake")}
    plan = plan_site(site, **kw)
    svc = {s.id: s for s in plan.steps.values() if s.kind == "service"}
    assert {"service.postgres", "service.redis"} <= set(svc) and "service.qdrant" not in svc
    # lemonldap.sql: the sign-in provider's role, database and schema (the LXC site's provider);
    # gateway.sql: the model gateway's own role and database
    assert sorted(svc["service.postgres"].payload[1]) == ["conf.d/aicommons.conf", "gateway.sql", "lemonldap.sql",
                                                          "pg_hba.conf"]
    assert sorted(svc["service.redis"].payload[1]) == ["redis.conf", "users.acl"]
    assert not [s for s in svc.values() if "install.sh" in s.payload[1]]


def test_a_failing_install_fails_the_step_and_is_planned_again(tmp_path):
    site = _site(tmp_path)
    kw = _kw(tmp_path, exec_rc={"/opt/aicommons/qdrant/install.sh": 3})
    result = apply_site(site, **kw)
    assert [o.step for o in result.errors if o.status == "failed"] == ["service.qdrant"]
    assert "rc 3" in result.outcomes["service.qdrant"].detail
    skipped = {o.step for o in result.errors if o.status == "skipped"}
    assert skipped and all(result.plan.steps[i].phase > 1 for i in skipped)  # later phases wait for it
    kw["driver"].exec_rc.clear()
    again = plan_site(site, **kw)
    assert set(again.steps) == skipped | {"service.qdrant"}
    assert apply_site(site, **kw).ok and plan_site(site, **kw).empty


@pytest.fixture
def olla():
    models, pulls = ["llama3.2:latest"], []
    srv = ollama(models, pulls, missing={"no-such-model"})
    srv.models, srv.pulls = models, pulls
    yield srv
    srv.stop()


def test_ollama_models_are_pulled_once_after_ollama_is_up(tmp_path, olla):
    site = _site(tmp_path, models=["llama3.2", "qwen3:8b"])
    kw = _kw(tmp_path, urls={"ollama": olla.url})
    first = plan_site(site, **kw)
    step = first.steps["ollama.models"]
    assert "not running yet" in step.reason and olla.pulls == []  # not dialled before the container runs
    oll = next(c for c in first.resolved.containers if c.name == "ollama")
    assert {f"container.{oll.ctid}", f"service.{oll.hostname}"} <= step.deps
    result = apply_site(site, **kw)
    assert result.ok, [(o.step, o.detail) for o in result.errors]
    assert [p["model"] for p in olla.pulls] == ["qwen3:8b"]  # llama3.2 was there already
    assert plan_site(site, **kw).empty

    olla.models.remove("qwen3:8b")  # removed by hand: planned again, pulled again
    plan = plan_site(site, **kw)
    assert plan.steps["ollama.models"].reason == "missing qwen3:8b"
    assert apply_site(site, **kw).ok and [p["model"] for p in olla.pulls] == ["qwen3:8b", "qwen3:8b"]


def test_ollama_unreachable_is_planned_with_a_reason_and_a_failed_pull_fails_the_step(tmp_path, olla):
    site = _site(tmp_path, models=["no-such-model"])
    kw = _kw(tmp_path, urls={"ollama": olla.url})
    result = apply_site(site, **kw)
    assert [o.step for o in result.errors] == ["ollama.models"]
    assert "no-such-model" in result.outcomes["ollama.models"].detail
    olla.stop()
    plan = plan_site(site, **kw)
    assert "cannot be read yet" in plan.steps["ollama.models"].reason


def test_no_models_or_a_driver_skipping_ollama_gives_no_models_step(tmp_path, olla):
    site = _site(tmp_path)
    assert "ollama.models" not in plan_site(site, **_kw(tmp_path, urls={"ollama": olla.url})).steps

    class Skipping(FakeDriver):
        def skipped_services(self, resolved):
            return {"ollama": "no image registry here"}

    site = _site(tmp_path, models=["llama3.2"])
    kw = {**_kw(tmp_path), "driver": Skipping(tmp_path / "fake", urls={"ollama": olla.url})}
    plan = plan_site(site, **kw)
    assert "ollama.models" not in plan.steps and olla.pulls == []
    # it installs the rest itself; the engine delivers only their rendered system config
    assert "service.ollama" not in plan.steps
    assert not [s for s in plan.steps.values() if s.kind == "service" and "install.sh" in s.payload[1]]



def test_proxmox_simulator_gets_the_rendered_files_over_pct_push_and_runs_install_sh(tmp_path):
    """Against the simulated Proxmox VE (API over HTTPS + SSH `pct push`/`pct exec`)."""
    import yaml

    from aicommons.drivers.targets import LocalDirTarget
    from tests.test_proxmox_driver import driver_of, new_sim

    sim = new_sim()
    try:
        data = yaml.safe_load(sim.site_yaml(1))
        data["services"] = {"postgres": {}, "redis": {}, "qdrant": {}, "ollama": {}, "garage": {}, "searxng": {}}
        site = tmp_path / "site.yml"
        site.write_text(yaml.safe_dump(data, sort_keys=False))
        from aicommons.spec.load import load_site

        kw = dict(driver=driver_of(sim, load_site(site)[0]), backends=[], target=LocalDirTarget(tmp_path / "t"))
        result = apply_site(site, **kw)
        assert result.ok, [(o.step, o.detail) for o in result.errors]
        files = _rendered(site, tmp_path)
        ctid = next(c.ctid for c in result.plan.resolved.containers if c.name == "redis")
        ct = sim.cluster.cts[ctid]
        assert ct.fs["/opt/aicommons/redis/users.acl"].decode() == files["services/redis/users.acl"].content
        assert ct.fs["/opt/aicommons/redis/users.acl:mode"] == b"0600"
        runs = [r.argv for r in sim.records if r.ctid == ctid and r.argv[:2] == ["sh", "-eu"]]
        assert runs == [["sh", "-eu", "/opt/aicommons/redis/install.sh"]]  # installed once
        sim.reset_counts()
        assert plan_site(site, **kw).empty and apply_site(site, **kw).ok and sim.writes() == 0
    finally:
        sim.close()


def test_a_removed_shared_container_takes_its_service_record_with_it(tmp_path):
    site, kw = _site(tmp_path), _kw(tmp_path)
    edit_site(site, lambda d: d["services"].__setitem__("tika", {}))
    assert apply_site(site, **kw).ok
    from aicommons.engine.api import open_state

    with_tika = open_state(site)
    try:
        assert "service.tika" in with_tika.applied()
    finally:
        with_tika.close()
    edit_site(site, lambda d: d["services"].pop("tika"))
    plan = plan_site(site, **kw)
    assert [s.kind for s in plan.steps.values() if s.action == "delete"] == ["container"]
    assert apply_site(site, **kw).ok
    state = open_state(site)
    try:
        assert "service.tika" not in state.applied()
    finally:
        state.close()
    assert plan_site(site, **kw).empty


def test_langfuse_gets_its_key_and_bucket_at_apply_before_it_starts(tmp_path):
    """Issue 14: no code created Langfuse's S3 key or bucket. SIMULATED: the object store (a fake
    back end recording the call); what the real stores do with it: test_tenancy_objectstore.py."""
    from aicommons.tenancy.fake import FakeBackend
    made = []

    class Store(FakeBackend):
        def ensure_service(self, service, kid, sec):
            made.append((service, kid, len(sec)))

    site = _site(tmp_path)
    kw = _kw(tmp_path)
    kw["backends"] = [*fake_backends(tmp_path / "fake", names=("postgres", "redis", "qdrant")),
                      Store("s3", tmp_path / "fake")]
    plan = plan_site(site, **kw)
    step = plan.steps["s3.service.langfuse"]
    lf = next(i for i, s in plan.steps.items() if s.kind == "service" and s.payload[0].name == "langfuse")
    assert "s3.service.langfuse" in plan.steps[lf].deps
    assert any(d.startswith("service.") and "garage" in d for d in step.deps)
    result = apply_site(site, **kw)
    assert result.ok, [o.detail for o in result.errors]
    assert [m[0] for m in made] == ["langfuse"] and made[0][1].startswith("GK") and made[0][2] == 64
    assert "s3.service.langfuse" not in plan_site(site, **kw).steps  # done: a no-op next time


def test_delivering_users_acl_keeps_a_suspended_user_off(tmp_path):
    """The rendered users.acl has every tenant `on`; copying it over the server's file must not
    resume a user `users suspend` turned off. REAL: sh and awk run the generated script."""
    import subprocess

    from aicommons.engine.services import apply_script

    root, etc = tmp_path / "opt", tmp_path / "etc"
    root.mkdir()
    etc.mkdir()
    live = etc / "users.acl"
    live.write_text("user admin on #aa ~* &* +@all\nuser u_user1 off sanitize-payload #bb ~user1:* +@all\n"
                    "user u_user2 on #cc ~user2:* +@all\n")
    import os

    (root / "users.acl").write_text("user default off\nuser admin on #aa ~* &* +@all\n"
                                    "user u_user1 reset on #bb ~user1:* +@all\nuser u_user2 reset on #cc ~user2:* +@all\n"
                                    "user u_user3 reset on #dd ~user3:* +@all\n")
    os.chmod(root / "users.acl", 0o600)
    script = apply_script("redis", str(root), {"users.acl"})
    script = script.replace("/etc/redis/users.acl", str(live)).replace(" -o redis -g redis", "")
    script = script.replace("systemctl restart redis-server", "true")
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = {ln.split()[1]: ln for ln in live.read_text().splitlines()}
    assert " off " in lines["u_user1"] and " on " not in lines["u_user1"]
    assert " on " in lines["u_user2"] and " on " in lines["u_user3"] and " on " in lines["admin"]
    assert oct(live.stat().st_mode & 0o777) == "0o600"  # hashes stay private


def test_changed_isolation_rules_ensure_every_tenant_again(tmp_path):
    """An upgrade that tightens the Redis deny list or the PostgreSQL hardening must reach sites
    whose tenants already exist: the back end's `rules` are part of each slice's fingerprint."""
    site = _site(tmp_path)
    kw = _kw(tmp_path)
    redis_fake = next(b for b in kw["backends"] if b.name == "redis")
    redis_fake.rules = "v1"
    assert apply_site(site, **kw).ok
    assert not [s for s in plan_site(site, **kw).steps.values() if s.kind == "tenant"]
    redis_fake.rules = "v2"
    again = [s for s in plan_site(site, **kw).steps.values() if s.kind == "tenant"]
    assert again and {s.id.split(".")[1] for s in again} == {"redis"} and all(s.action == "update" for s in again)


def test_the_catalog_says_where_every_rendered_system_file_goes_and_how_it_takes_effect():
    """One source for service knowledge: each file a service's `configure:` names is one the
    renderer makes for that service (no stale entry), and the reload covers pg_hba.conf alone."""
    from aicommons.catalog import load_catalog
    from aicommons.engine.services import apply_script, files_of
    from aicommons.plan import resolve
    from aicommons.spec.default import render_site_yaml
    from aicommons.spec.load import load_text
    from tests.test_render import FakeSecrets

    made: dict[str, set[str]] = {}
    for driver in ("proxmox", "lxc"):  # each driver's sign-in provider (lemonldap.sql: LL::NG's schema)
        resolved = resolve(load_text(render_site_yaml(users=2, driver=driver))[0])
        files = render_site(resolved, FakeSecrets())
        for c in resolved.containers:
            if c.role == "shared":
                made.setdefault(c.name, set()).update(files_of(files, c.hostname))
    configured = {n: s.configure for n, s in load_catalog().services.items() if s.configure}
    assert {"postgres", "redis", "qdrant", "ollama", "garage", "lemonldap"} <= set(configured)
    for name, cfg in configured.items():
        if name not in made:
            continue  # minio: not in the reference site
        assert set(cfg.files) <= made[name], name
    reload = apply_script("postgres", "/opt/x", {"pg_hba.conf"}).strip().splitlines()[-1]
    assert reload.startswith("systemctl reload postgresql") and "restart" not in reload
    both = apply_script("postgres", "/opt/x", {"pg_hba.conf", "conf.d/aicommons.conf"})
    assert both.strip().splitlines()[-1].startswith("systemctl restart postgresql") and "install -D" in both
    assert apply_script("postgres", "/opt/x", {"install.sh"}) is None  # not a system file
