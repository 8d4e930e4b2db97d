"""plan_site / apply_site: the services the CLI, `up`, `down` and `secrets rotate` call.

plan = load site -> resolve with the state's held slots -> render -> refresh reality -> diff.
apply = lock -> (check a saved plan is not stale) -> journal each step before it runs -> walk
the DAG -> record outcomes. Driver and back ends are injected in tests; otherwise they come from
the registries (the test suite alone can select the file-backed fakes: tests/fakeworld.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from aicommons.drivers.base import (
    AppliesFirewall,
    BindsControlPlane,
    BindsSecrets,
    ChecksPlans,
    Closes,
    ComputeDriver,
    ConfiguresServices,
    ControlPlane,
    DiffsFirewall,
    HasTraefikTarget,
    ManagesNetwork,
    NotesHost,
    ServiceUrls,
    SkipsServices,
)
from aicommons.drivers.targets import FileTarget
from aicommons.engine.model import PLAN_FORMAT, ApplyResult, Plan
from aicommons.engine.planner import FIREWALL, Planner, Reality
from aicommons.errors import AicError
from aicommons.plan import certificates as certs_plan
from aicommons.state.store import StateStore, default_path

CERTS_META = "certificates"  # state meta: certificate name -> hosts (JSON), the assignment in force


class StalePlan(AicError):
    exit_code = 1


def open_state(site_file, state_path=None, *, create: bool = True, read_only: bool = False) -> StateStore:
    """The state named by --state, else $AICOMMONS_STATE (a path or postgresql:// URL), else beside the site."""
    return StateStore.open(state_path or os.environ.get("AICOMMONS_STATE") or default_path(site_file),
                           create=create, read_only=read_only)


def key_source(site, state: StateStore, site_file):
    from aicommons.state.secrets import KeySource

    base = Path(site_file).resolve().parent
    kf = Path(site.secrets.key_file)
    return KeySource(env=site.secrets.key_env, key_file=kf if kf.is_absolute() else base / kf)


def fingerprint(site_file, state: StateStore) -> str:
    site_sha = hashlib.sha256(Path(site_file).read_bytes()).hexdigest()[:16]
    return f"{site_sha}-{state.serial()}"


def default_driver(site, site_file=None) -> ComputeDriver:
    from aicommons.drivers import registry

    if registry.FAKE_WORLD:  # the test suite's (tests/fakeworld.py)
        from aicommons.drivers.fake import FakeDriver

        return FakeDriver(registry.FAKE_WORLD)
    try:
        from aicommons.drivers.registry import driver_for, site_owner

        return driver_for(site, **({"owner": site_owner(site_file)} if site_file else {}))
    except ImportError as exc:
        raise AicError(f"driver.kind {site.driver.kind}: the driver is not available in this build ({exc})") from None


def default_backends(resolved, secrets, base_dir) -> list:
    """The site's tenancy back ends. One that cannot be built (an admin login that does not resolve,
    a missing library) is an error, never a note: a plan without it would silently plan no tenant
    slices at all (issue 23)."""
    from aicommons.drivers import registry

    if registry.FAKE_WORLD:  # the test suite's (tests/fakeworld.py)
        from aicommons.tenancy.fake import fake_backends

        return fake_backends(registry.FAKE_WORLD)
    try:
        from aicommons.tenancy.registry import backends_for
    except ImportError as exc:
        raise AicError(f"the tenancy back ends are not available in this build ({exc}); reinstall aicommons "
                       "(scripts/install.sh)") from None
    return list(backends_for(resolved, secrets, base_dir))


def default_target(site, driver: ComputeDriver) -> FileTarget | None:
    """The driver's Traefik target (None: it has none), else the dynamic dir on this host."""
    if isinstance(driver, HasTraefikTarget):
        return driver.traefik_target()
    from aicommons.drivers.targets import LocalDirTarget

    return LocalDirTarget(site.network.traefik.dynamic_dir)


def default_renderer(resolved, secrets) -> dict:
    from aicommons.render import render_site

    return render_site(resolved, secrets)


def external_secrets(site, site_file) -> list[str]:
    """Admin passwords of `external:` servers (from site.yaml refs), so they are redacted too."""
    from aicommons.spec.secretref import resolve_ref

    out = []
    for name, ov in site.services.items():
        if ov.external is not None and ov.external.admin_password:
            try:
                out.append(resolve_ref(ov.external.admin_password, f"services.{name}.external.admin_password",
                                       Path(site_file).resolve().parent))
            except AicError:
                pass  # unresolvable here: the back end reports it when it needs it
    return out


class Session:
    """Everything one plan/apply works with (kept together so apply reuses what plan built)."""

    def __init__(self, site_file, *, state_path=None, driver=None, backends=None, renderer=None, target=None,
                 read_only: bool = False):
        from aicommons.spec import load_site

        self.site_file = Path(site_file)
        if not self.site_file.exists():
            raise AicError(f"{site_file}: no such site file; `aicommons init` writes one")
        self.site, index = load_site(self.site_file)
        # Read-only (plan, users list/show): no state file, key file or secret is made (Terraform's
        # contract for plan); values not generated yet are throwaway ones (SecretStore).
        self.state = open_state(site_file, state_path, read_only=read_only)
        # What an aicommons service of the site (the portal) is pointed at: this same state.
        where = str(state_path or os.environ.get("AICOMMONS_STATE") or default_path(self.site_file))
        self.state_target = where if "://" in where else str(Path(where).resolve())
        self._own_driver = False
        try:
            self._setup(index, driver, backends, renderer, target)
        except BaseException:
            self.close()
            raise

    def _setup(self, index, driver, backends, renderer, target) -> None:
        from aicommons.plan import resolve

        site_file = self.site_file
        self.secrets = self.state.secrets(key_source(self.site, self.state, site_file))
        self.resolved = resolve(self.site, held=self.state.held_slots(), index=index,
                                certificates=certs_plan.from_json(self.state.meta(CERTS_META)))
        self.notes: list[str] = list(self.resolved.notes)
        self.skip_notes: list[str] = []  # services the driver does not run: no tenants there
        self.backend_notes: list[str] = []  # back ends that could not be built: audit gaps
        self.driver: ComputeDriver = driver if driver is not None else default_driver(self.site, self.site_file)
        self._own_driver = driver is None
        base = self.site_file.resolve().parent
        self.backends = backends if backends is not None else default_backends(self.resolved, self.secrets, base)
        self.notes += self.backend_notes
        if backends is None and isinstance(self.driver, SkipsServices):  # a service it cannot install holds no tenants
            gone = self.driver.skipped_services(self.resolved)
            for b in [b for b in self.backends if _service_of(self, b) in gone]:
                note = (f"{_service_of(self, b)} is skipped by the {self.site.driver.kind} driver "
                        f"({gone[_service_of(self, b)]}); its tenant slices are not planned")
                self.notes.append(note)
                self.skip_notes.append(note)
            self.backends = [b for b in self.backends if _service_of(self, b) not in gone]
        if isinstance(self.driver, NotesHost):  # plan warns before apply when the host cannot hold the site
            self.notes += self.driver.host_notes(self.resolved)
        if self._own_driver and isinstance(self.driver, ManagesNetwork):  # reach a running site's addresses
            self.driver.attach()
        if isinstance(self.driver, BindsSecrets):  # drivers whose service recipes need admin passwords
            self.driver.bind_secrets(self.secrets)
        keys = key_source(self.site, self.state, site_file)
        self.control = ControlPlane(site_file.resolve(), self.state_target, lambda: keys.export(self.state))
        if isinstance(self.driver, BindsControlPlane):  # drivers that deploy aicommons services (the portal)
            self.driver.bind_control(self.control)
        self.renderer = renderer or default_renderer
        self.target: FileTarget | None = target if target is not None else default_target(self.site, self.driver)
        if self.target is None:
            self.notes.append("the driver has no place for Traefik's files; routes are not applied")

    def close(self) -> None:
        if self._own_driver and isinstance(self.driver, Closes):  # an injected driver is the caller's to close
            self.driver.close()
        self.state.close()


def _refresh(s: Session) -> Reality:
    containers = {c.ctid: c for c in s.driver.list_containers()}
    tenants: dict = {}
    unread: set[str] = set()
    for b in s.backends:
        service = _service_of(s, b)
        ep = s.resolved.endpoints.get(service)
        running = {c.ctid for c in containers.values() if c.status == "running"}
        site_made = [c.ctid for c in s.resolved.containers if c.role == "shared" and c.name == service]
        if ep is not None and not ep.external and not (site_made and all(i in running for i in site_made)):
            # Not running yet: nothing to read, and nothing to connect to (its tenants are all new).
            s.notes.append(f"{service} is not running yet; its tenant slices are planned as new")
            tenants[b.name] = {}
            unread.add(b.name)
            continue
        try:
            tenants[b.name] = b.observe()
        except AicError as exc:
            s.notes.append(f"could not read {b.name} ({exc}); planning as if it held nothing")
            tenants[b.name] = {}
            unread.add(b.name)
    allocs = s.state.allocations()
    allocations = {a.ctid: a.user for a in allocs if a.status != "purged"}
    active = {a.user: a.ctid for a in allocs if a.status == "active"}
    traefik = s.target.list() if s.target is not None else {}
    return Reality(containers, tenants, traefik, s.state.applied(), allocations, unread, active,
                   _firewall_diff(s), services=_delivered_services(s),
                   ollama=_ollama_reality(s, containers))


def configures_services(driver: ComputeDriver) -> bool:
    """Does the driver install and configure shared services itself (then the engine delivers no service files)?

    Said by `configures_services`; without it, a driver that reports services it skips
    (`skipped_services`, the LXC driver) is one that installs the others by its own recipes."""
    if isinstance(driver, ConfiguresServices):
        return bool(driver.configures_services)
    return isinstance(driver, SkipsServices)


def _delivered_services(s: Session) -> bool | frozenset[str]:
    """Which shared services get their rendered files from the engine: all (True), or, for a driver
    that installs services by its own recipes, the system config files (pg_hba.conf, users.acl, …)
    of those it runs: one rendered configuration for every driver."""
    if not configures_services(s.driver):
        return True
    from aicommons.catalog import load_catalog

    skipped = s.driver.skipped_services(s.resolved) if isinstance(s.driver, SkipsServices) else {}
    return frozenset(n for n, svc in load_catalog().services.items() if svc.configure and n not in skipped)


def _ollama_reality(s: Session, containers: dict) -> dict | None:
    """What of site.models Ollama lacks (None: no `ollama.models` step for this site and driver)."""
    from aicommons.engine.services import missing_models, ollama_url

    wanted = s.site.ollama_tags
    if not wanted or "ollama" not in s.resolved.endpoints or (
            isinstance(s.driver, SkipsServices) and "ollama" in s.driver.skipped_services(s.resolved)):
        return None
    # a driver may say where the control plane reaches it
    url = s.driver.service_url("ollama") if isinstance(s.driver, ServiceUrls) else ollama_url(s.resolved)
    if url is None:
        s.notes.append(f"the {s.driver.kind} driver gives no address for Ollama; site models are not pulled")
        return None
    ep = s.resolved.endpoints["ollama"]
    mine = [c.ctid for c in s.resolved.containers if c.role == "shared" and c.name == "ollama"]
    if not ep.external and not all(getattr(containers.get(i), "status", "") == "running" for i in mine):
        return {"url": url, "wanted": wanted, "missing": None, "why": "Ollama is not running yet; pull "
                f"{', '.join(wanted)} once it runs"}
    try:
        return {"url": url, "wanted": wanted, "missing": missing_models(url, wanted), "why": ""}
    except AicError as exc:
        return {"url": url, "wanted": wanted, "missing": None, "why": f"Ollama cannot be read yet ({exc}); pull "
                f"{', '.join(wanted)} once it runs"}


def _firewall_diff(s: Session) -> list[str] | None:
    """What the driver's firewall differs in (None: the driver applies none)."""
    if not isinstance(s.driver, AppliesFirewall):
        return None
    if not isinstance(s.driver, DiffsFirewall):
        return ["site"]  # the driver cannot say: apply it every run (it writes only what differs)
    try:
        return list(s.driver.firewall_diff(s.resolved))
    except AicError as exc:
        s.notes.append(f"could not read the firewall ({exc}); planning to apply it")
        return ["site"]


def _service_of(s: Session, backend) -> str:
    from aicommons.plan.addresses import prefix_of

    name = getattr(backend, "service", None) or backend.name
    return s.site.object_storage if prefix_of(name) == "s3" and name == "s3" else name


def build_plan(s: Session, *, destroy: bool = False) -> Plan:
    from aicommons.plan.secrets import tenant_keys

    for t in s.resolved.tenants:  # generate-once: every value a render or back end needs exists now
        for k in tenant_keys(t):
            s.secrets.get(t.user, k)
    files = {} if destroy else s.renderer(s.resolved, s.secrets)
    if s.target is None:
        files = {p: f for p, f in files.items() if not p.startswith("traefik/")}
    if not destroy:
        from aicommons.engine.services import runs_from_files

        files.update(runs_from_files(s.resolved, s.site_file))
    planner = Planner(s.resolved, files, s.secrets.versions(), _refresh(s), s.backends, destroy=destroy)
    changes, steps, notes = planner.run()
    return Plan(str(s.site_file), fingerprint(s.site_file, s.state), s.resolved, changes, steps,
                s.notes + notes, destroy)


def preflight(site_file, *, destroy: bool = False) -> None:
    """Before the state is opened or anything changes: refuse when this host lacks what the site's
    driver runs (drivers/registry.check_host). Only for the driver the site names (an injected
    driver, or the file-backed fakes, bring their own world)."""
    if os.environ.get("AICOMMONS_FAKE_DIR") or not Path(site_file).exists():
        return  # no site file: Session says so
    from aicommons.drivers.registry import check_host
    from aicommons.spec import load_site

    check_host(load_site(Path(site_file))[0], destroy=destroy)


def plan_site(site_file, *, state_path=None, driver=None, backends=None, renderer=None, target=None,
              destroy: bool = False, check_host: bool = False) -> Plan:
    """The plan (read-only: no state, key or secret is made). check_host: run the driver's host
    preflight first, as apply does (`up --dry-run`)."""
    if check_host and driver is None:
        preflight(site_file, destroy=destroy)
    s = Session(site_file, state_path=state_path, driver=driver, backends=backends, renderer=renderer, target=target,
                read_only=True)
    try:
        return build_plan(s, destroy=destroy)
    finally:
        s.close()


def save_plan(plan: Plan, path) -> None:
    Path(path).write_text(json.dumps(plan.to_dict(), indent=1, sort_keys=True))


def select(plan: Plan, targets) -> Plan:
    """Limit a plan to the named addresses / users / steps, plus what they depend on."""
    if not targets:
        return plan
    targets = set(targets)
    keep = {i for i, s in plan.steps.items() if i in targets or s.owner in targets or targets & set(s.addresses)}
    if keep:  # shared configuration lists every user (pg_hba, users.acl, blueprints): it follows them
        keep |= {i for i, s in plan.steps.items() if s.kind == "service"}
        if plan.resolved is not None:  # so does the proxy's file: its certificate holders name users' hosts
            from aicommons.plan import addresses

            keep |= {addresses.traefik_file(plan.resolved.proxy_file)} & set(plan.steps)
    todo = list(keep)
    while todo:
        for d in plan.steps[todo.pop()].deps:
            if d not in keep:
                keep.add(d)
                todo.append(d)
    fw = plan.steps.get(FIREWALL)
    if fw is not None and any(plan.steps[i].kind == "container" for i in keep):
        keep.add(fw.id)  # the site-wide firewall follows the containers it covers
        fw.deps &= keep
    plan.steps = {i: s for i, s in plan.steps.items() if i in keep}
    plan.changes = [c for c in plan.changes if c.step in keep or c.action == "no-op"]
    return plan


def check_saved(saved: dict, plan: Plan) -> None:
    if saved.get("format") != PLAN_FORMAT:
        raise StalePlan(f"plan file format {saved.get('format')!r} is not {PLAN_FORMAT}; run `aicommons plan --out` again")
    if saved.get("fingerprint") != plan.fingerprint:
        raise StalePlan("the saved plan is stale: the site file or the state changed since it was made; "
                        "run `aicommons plan --out FILE` again")
    want = {s["id"]: s["action"] for s in saved.get("steps", [])}
    have = {i: s.action for i, s in plan.steps.items()}
    extra = {i: a for i, a in have.items() if i not in want}
    differ = {i: (a, have.get(i)) for i, a in want.items() if have.get(i) != a}
    if differ:
        i, (a, b) = next(iter(differ.items()))
        raise StalePlan(f"the saved plan is stale: reality changed ({i} was planned as {a}, now {b or 'no-op'}); "
                        f"run `aicommons plan --out FILE` again")
    plan.steps = {i: s for i, s in plan.steps.items() if i not in extra}


def apply_site(site_file, *, state_path=None, targets=None, yes: bool = True, driver=None, backends=None,
               out=None, plan_file=None, parallelism: int = 4, lock_timeout: float = 0.0, purge: bool = False,
               destroy: bool = False, renderer=None, target=None, confirm: Callable[[Plan], bool] | None = None,
               step_timeout: float | None = 1800, command: str = "apply") -> ApplyResult:
    from aicommons.engine.report import Redactor, Reporter
    from aicommons.engine.runner import run_dag
    from aicommons.engine.steps import Context, execute
    from aicommons.state.lock import StateLock

    saved = json.loads(Path(plan_file).read_text()) if plan_file else None
    if saved is not None:
        destroy = bool(saved.get("destroy"))
    if driver is None:
        preflight(site_file, destroy=destroy)  # at once: nothing opened, locked or changed yet
    s = Session(site_file, state_path=state_path, driver=driver, backends=backends, renderer=renderer, target=target)
    lock = StateLock(s.state, command)
    locked = False
    try:
        lock.acquire(timeout=lock_timeout)
        locked = True
        redact = Redactor(s.secrets, external_secrets(s.site, s.site_file))
        rep = Reporter(out, redact, default_path(site_file).parent / "logs")
        if lock.broken:
            rep.line(f"note: broke the lock of a dead process ({lock.broken.describe()})")
        for run_id, cmd, cut in s.state.mark_interrupted():
            rep.line(f"note: run {run_id} ({cmd}) was interrupted" + (f" during {', '.join(cut[:5])}" if cut else "")
                     + "; this run redoes whatever is still needed")
        plan = select(build_plan(s, destroy=destroy), targets)
        redact.refresh()
        if saved is not None:
            check_saved(saved, plan)
        elif plan.steps and not yes and not (confirm and confirm(plan)):
            raise AicError("apply cancelled; nothing was changed")
        if not destroy and isinstance(s.driver, ManagesNetwork):
            # Host networking is made here, under the lock, once the run is confirmed, never by a
            # plan (even an empty run restarts a Traefik that died).
            s.driver.open_network()
        result = ApplyResult(None, plan)
        if plan.empty:
            rep.line("no changes: the site matches the plan")
            return result
        if isinstance(s.driver, ChecksPlans) and not plan.destroy:
            s.driver.check(plan, purge=purge)  # the driver refuses a plan it cannot carry out whole, before any change (drivers/base.py)
        run_id = result.run_id = s.state.begin_run(command)
        rep.open_log(run_id)
        ctx = Context(s.state, s.secrets, s.driver, s.target, redact, purge=purge, control=s.control,
                      resolved=s.resolved)

        def step_fn(step):
            s.state.journal(run_id, step.id, step.action, "started", step.reason)
            return execute(ctx, step)

        def on_event(step, status, detail):
            detail = redact(detail)
            if status != "start":
                s.state.journal(run_id, step.id, step.action, status, detail)
            rep.event(step, status, detail)

        rep.begin(plan)
        result.outcomes = run_dag(plan.steps, step_fn, parallelism=parallelism, step_timeout=step_timeout,
                                  on_event=on_event)
        for o in result.outcomes.values():
            o.detail = redact(o.detail)
        counts = {st: sum(o.status == st for o in result.outcomes.values()) for st in ("ok", "failed", "skipped")}
        if result.ok:  # the certificate assignment now in force: the next plan keeps it stable
            s.state.set_meta(CERTS_META, certs_plan.to_json(s.resolved.certificates))
        s.state.finish_run(run_id, "ok" if result.ok else "failed", {**counts, "changes": plan.counts()})
        rep.end(result)
        return result
    finally:
        try:
            if locked and isinstance(s.driver, ManagesNetwork):
                s.driver.close_network()  # only once no container of the site is left
        finally:
            lock.release()
            s.close()
