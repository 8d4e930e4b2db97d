"""What each kind of step does. Every step is idempotent: re-running it after a crash at any
point converges (create tolerates an existing container, back ends `ensure`, files are written
whole or not at all), and the state records it only after it succeeded.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aicommons.drivers.base import (
    AppliesFirewall,
    Archives,
    ComputeDriver,
    ControlPlane,
    RunsNativeApps,
    SkipsCompose,
    TakesNotes,
)
from aicommons.drivers.targets import FileTarget
from aicommons.engine.model import Step
from aicommons.engine.planner import container_spec
from aicommons.errors import PermanentError
from aicommons.plan import addresses as A
from aicommons.plan.model import Container, Tenant
from aicommons.plan.secrets import tenant_keys
from aicommons.state.secrets import SecretStore
from aicommons.state.store import StateStore

BUNDLE_ROOT = "/opt/aicommons"


@dataclass
class Context:
    store: StateStore
    secrets: SecretStore
    driver: ComputeDriver
    target: FileTarget | None  # for Traefik's dynamic files (None: the driver has no place for them)
    redact: Callable[[str], str]
    purge: bool = False
    ready_timeout: float = 120
    control: ControlPlane | None = None  # the site file, state and key an aicommons service (portal) runs on
    resolved: Any = None  # the ResolvedSite being applied (an aicommons service's own settings come from it)

    def tenant_secrets(self, t: Tenant) -> dict[str, str]:
        return {k: self.secrets.get(t.user, k) for k in tenant_keys(t)}


def execute(ctx: Context, step: Step) -> str | None:
    """Carry out one step; a returned string is a note for the operator (e.g. what was not run)."""
    from aicommons.engine.services import run_models, run_service

    return {"container": _container, "tenant": _tenant, "traefik": _traefik, "bundle": _bundle,
            "allocation": _allocation, "firewall": _firewall, "service": run_service,
            "ollama": run_models, "s3service": _service_bucket}[step.kind](ctx, step)


def _service_bucket(ctx: Context, step: Step) -> None:
    from aicommons.plan.policy import service_credentials

    store, service = step.payload
    kid, sec = service_credentials(service, ctx.secrets.get)
    store.ensure_service(service, kid, sec)
    ctx.store.record_applied(step.id, "s3service", None, step.fingerprint, {"service": service, "key": kid})


PENDING = "pending"  # recorded before acting, so a kill mid-step leaves a record the next plan sees


def _allocation(ctx: Context, step: Step) -> None:
    assert step.owner is not None, "the planner names the user of every allocation step"
    ctx.store.set_allocation_status(step.owner, "purged" if ctx.purge else "removed")


def _container(ctx: Context, step: Step) -> str | None:
    d = ctx.driver
    if step.action == "delete":
        have = step.payload
        if have.status == "running":
            d.stop(have.ctid)
        if not ctx.purge:
            if not isinstance(d, Archives):  # never destroy data nobody kept a copy of
                raise PermanentError(f"container {have.ctid} is stopped but kept: the {d.kind} driver cannot archive "
                                     f"its data; back it up, then remove it with --purge")
            d.archive(have.ctid)
        d.destroy(have.ctid)
        if step.owner:
            ctx.store.set_allocation_status(step.owner, "purged" if ctx.purge else "removed")
            ctx.store.forget_applied(A.bundle(step.owner))
        else:  # its configuration went with it
            ctx.store.forget_applied(f"service.{have.hostname}")
        ctx.store.forget_applied(step.id)
        return None
    c: Container = step.payload
    if c.role == "user":  # the slot is the state's before anything exists in the world
        ctx.store.allocate(c.name, c.ip, c.ctid)
    if step.action == "replace":
        have = d.get(c.ctid)
        if have is not None:
            if have.status == "running":
                d.stop(c.ctid)
            d.destroy(c.ctid)
    have = d.get(c.ctid)
    if have is None:
        d.create(c)
    elif any(getattr(have, k, None) not in (None, v) for k, v in container_spec(c).items() if k != "ip"):
        d.update(c)
    now = d.get(c.ctid) or have
    if now is None or now.status != "running":
        d.start(c.ctid)
    d.wait_ready(c.ctid, timeout=ctx.ready_timeout)
    ctx.store.record_applied(step.id, "container", step.owner, step.fingerprint, {"ctid": c.ctid, "ip": c.ip})
    # e.g. Proxmox tasks that ended with warnings (drivers/base.py)
    return ("; ".join(d.take_notes(c.ctid)) or None) if isinstance(d, TakesNotes) else None


def _tenant(ctx: Context, step: Step) -> None:
    backend, t = step.payload
    if step.action == "delete":
        backend.remove(t, purge=ctx.purge)
        ctx.store.forget_applied(step.id)
        return
    prefix = A.prefix_of(backend.name)
    if not ctx.store.is_applied(step.id):  # first touch: record intent (with the tenant) before acting
        ctx.store.record_applied(step.id, "tenant", t.user, PENDING, {"tenant": asdict(t)})
    backend.ensure(t, ctx.tenant_secrets(t))
    versions = {k: ctx.secrets.version(t.user, k) for k in A.BACKEND_KEYS.get(prefix, ())}
    ctx.store.record_applied(step.id, "tenant", t.user, step.fingerprint,
                             {"tenant": asdict(t), "versions": versions})


def _traefik(ctx: Context, step: Step) -> None:
    name, f = step.payload
    assert ctx.target is not None, "traefik steps are planned only with a target (api.build_plan)"
    if step.action == "delete":
        ctx.target.delete(name)
        ctx.store.forget_applied(step.id)
        return
    if not ctx.store.is_applied(step.id):
        ctx.store.record_applied(step.id, "traefik", step.owner, PENDING, {"file": name})
    ctx.target.write(name, f.content, f.mode)
    ctx.store.record_applied(step.id, "traefik", step.owner, step.fingerprint, {"file": name})


def _bundle(ctx: Context, step: Step) -> str | None:
    t, files = step.payload
    root = posixpath.join(BUNDLE_ROOT, t.user)
    for rel, f in sorted(files.items()):
        ctx.driver.push(t.ctid, f.content.encode(), posixpath.join(root, rel), f.mode)
    if "native.json" in files:  # runtime native: systemd units from shared layers
        if not isinstance(ctx.driver, RunsNativeApps):
            note = (f"native units pushed to {root}; the {ctx.driver.kind} driver does not deliver the app "
                    "layers yet, so the apps are not started (use user_template.runtime: docker there)")
            ctx.store.record_applied(step.id, "bundle", t.user, step.fingerprint,
                                     {"files": sorted(files), "native": "not run", "reason": note})
            return note
        note = ctx.driver.run_native(t, root, files)
        ctx.store.record_applied(step.id, "bundle", t.user, step.fingerprint, {"files": sorted(files), "native": note})
        return f"{t.user}: {note}"
    # A driver that cannot run the apps here says why (LXC on a host that reaches no image
    # registry); the bundle is in place and the reason is reported, never silently dropped.
    reason = ctx.driver.compose_skip_reason(t) if isinstance(ctx.driver, SkipsCompose) else None
    if reason:
        ctx.store.record_applied(step.id, "bundle", t.user, step.fingerprint,
                                 {"files": sorted(files), "compose": "not run", "reason": reason})
        return f"bundle pushed to {root}; `docker compose up` not run: {reason}"
    if "docker-compose.yml" in files or "compose.yaml" in files:
        name = "docker-compose.yml" if "docker-compose.yml" in files else "compose.yaml"
        res = ctx.driver.exec(t.ctid, ["docker", "compose", "--project-directory", root, "-f",
                                       posixpath.join(root, name), "up", "-d", "--remove-orphans"], timeout=900)
        if not res.ok:
            raise PermanentError(f"`docker compose up -d` in container {t.ctid} failed (rc {res.rc}): "
                                 f"{ctx.redact((res.stderr or res.stdout).strip()[-500:])}")
    ctx.store.record_applied(step.id, "bundle", t.user, step.fingerprint, {"files": sorted(files)})
    return None


def _firewall(ctx: Context, step: Step) -> str | None:
    assert isinstance(ctx.driver, AppliesFirewall), "planned only for a driver that applies one (api._firewall_diff)"
    rep = ctx.driver.apply_firewall(step.payload)  # reads first, writes only what differs
    changed = list(getattr(rep, "changed", []) or [])
    ctx.store.record_applied(step.id, "firewall", None, step.fingerprint, {"changed": changed[:100]})
    notes = list(getattr(rep, "notes", []) or [])
    return "; ".join(notes) or None
