"""Diff the wish (resolved site + rendered files + secret versions) against reality and state.

Reality is read through the driver (`list_containers`), the tenancy back ends (`observe`) and the
Traefik file target (`list`); what this site applied before comes from the state. The result is
one change per address and one step per unit of work, wired into a DAG: a step waits for the
steps it needs, and every step of phase N waits for the shared containers of earlier phases.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from aicommons.drivers.base import ContainerState
from aicommons.drivers.targets import digest
from aicommons.engine.model import Change, Step
from aicommons.plan import addresses as A
from aicommons.plan.model import Container, ResolvedSite, Tenant

TRAEFIK_DIR = "traefik/dynamic/"
FIREWALL = "firewall"  # the one site-wide firewall step (address and step id)

# Shared services whose PostgreSQL role the site's PostgreSQL configuration makes (postgres.yaml).
ROLE_FROM_POSTGRES = frozenset({"gateway"})


@dataclass
class Reality:
    containers: dict[int, ContainerState]
    tenants: dict[str, dict[str, set[str]]]  # backend name -> user -> addresses
    traefik: dict[str, str]  # file name -> sha256
    applied: dict  # address -> state.store.Applied
    allocations: dict[int, str] = field(default_factory=dict)  # ctid -> user (from state)
    unread: set[str] = field(default_factory=set)  # back ends that could not be read
    active: dict[str, int] = field(default_factory=dict)  # user -> ctid of active allocations
    # None: the driver applies no firewall. Else what differs now (`ipset.X`, `group.X`, `container.N`).
    firewall: list[str] | None = None
    # Deliver shared containers' rendered files: all (True), or only the system config files of
    # these services (a driver that installs them by its own recipes).
    services: bool | frozenset = False
    # Site models to pull: {"url", "wanted", "missing" (None: Ollama could not be read), "why"}; None: no step.
    ollama: dict | None = None


def fp(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def container_spec(c: Container) -> dict:
    return {"hostname": c.hostname, "ip": c.ip, "memory_mb": c.memory_mb, "cores": c.cores, "disk_gb": c.disk_gb}


def tenant_from(attrs: dict) -> Tenant:
    d = dict(attrs)
    for k in ("databases", "qdrant_collections", "buckets", "apps"):
        d[k] = tuple(d.get(k, ()))
    return Tenant(**d)


class Planner:
    def __init__(self, resolved: ResolvedSite | None, files: dict, versions: dict, reality: Reality,
                 backends: list, destroy: bool = False):
        self.r = resolved
        self.files = files
        self.versions = versions  # (scope, key) -> version
        self.real = reality
        self.backends = backends
        self.destroy = destroy
        self.changes: list[Change] = []
        self.steps: dict[str, Step] = {}
        self.notes: list[str] = []

    def add(self, step: Step, addresses: list[str] | None = None) -> None:
        for a in addresses or step.addresses or [step.id]:
            self.changes.append(Change(a, step.action, step.reason, step.id))
        if step.action != "no-op":
            self.steps[step.id] = step

    def run(self) -> tuple[list[Change], dict[str, Step], list[str]]:
        containers = [] if self.destroy or self.r is None else self.r.containers
        tenants = [] if self.destroy or self.r is None else self.r.tenants
        self._containers(containers)
        self._tenants(tenants)
        self._traefik(containers)
        self._bundles(tenants)
        self._allocations(tenants)
        self._services(containers)
        self._after_their_role(containers)
        self._service_buckets(containers)
        self._ollama(containers)
        self._firewall()
        self._gates()
        return self.changes, self.steps, self.notes

    # ---- containers ----------------------------------------------------------------------------

    def _containers(self, wanted: list[Container]) -> None:
        by_ctid = {c.ctid: c for c in wanted}
        for c in wanted:
            addr = A.container(c.ctid)
            have = self.real.containers.get(c.ctid)
            owner = c.name if c.role == "user" else None
            spec = container_spec(c)
            step = Step(addr, "container", "no-op", "exists as planned", c.phase, owner, [addr],
                        fingerprint=fp(spec), payload=c)
            if have is None or have.status == "missing":
                step.action, step.reason = "create", "does not exist"
            elif have.ip and have.ip.split("/")[0] != c.ip:
                step.action, step.reason = "replace", f"address is {have.ip}, planned {c.ip}"
            else:
                diffs = [f"{k} {getattr(have, k)} -> {v}" for k, v in spec.items()
                         if k != "ip" and getattr(have, k, None) not in (None, v)]
                if diffs:
                    step.action, step.reason = "update", ", ".join(diffs)
                elif have.status != "running":
                    step.action, step.reason = "update", f"is {have.status}; start it"
            self.add(step)
        for ctid, have in sorted(self.real.containers.items()):
            if ctid in by_ctid:
                continue
            user = self.real.allocations.get(ctid)
            addr = A.container(ctid)
            why = f"user {user} is no longer in the site" if user else f"{have.hostname} is no longer in the site"
            if self.destroy:
                why = "site is being taken down"
            step = Step(addr, "container", "delete", why, 0, user, [addr], payload=have)
            extra = [A.bundle(user)] if user and A.bundle(user) in self.real.applied else []
            self.add(step, [addr, *extra])

    # ---- tenancy -------------------------------------------------------------------------------

    def _tenant_fp(self, t: Tenant, prefix: str, rules: str = "") -> str:
        keys = A.BACKEND_KEYS.get(prefix)
        keys = keys if keys is not None else ()
        parts = [asdict(t), [(k, self.versions.get((t.user, k), 0)) for k in keys]]
        # A back end's isolation rules (Redis deny list, PostgreSQL hardening) are part of every slice:
        # when they change, every tenant is ensured again.
        return fp(*parts, rules) if rules else fp(*parts)

    def _tenants(self, wanted: list[Tenant]) -> None:
        names = {t.user for t in wanted}
        for b in self.backends:
            prefix = A.prefix_of(b.name)
            seen = self.real.tenants.get(b.name, {})
            for t in wanted:
                addrs = A.tenant_addresses(t).get(prefix, [])
                if not addrs:
                    continue
                sid = f"tenant.{prefix}.{t.user}"
                have = seen.get(t.user, set())
                missing = [a for a in addrs if a not in have]
                f = self._tenant_fp(t, prefix, getattr(b, "rules", ""))
                rec = self.real.applied.get(sid)
                step = Step(sid, "tenant", "no-op", "exists as planned", 0, t.user, addrs, fingerprint=f,
                            payload=(b, t))
                if b.name in self.real.unread:
                    step.action = "update" if rec is not None else "create"
                    step.reason = f"{b.name} cannot be read yet; ensure once it runs"
                elif missing and len(missing) == len(addrs):
                    step.action, step.reason = "create", "does not exist"
                elif missing:
                    step.action, step.reason = "update", "missing " + ", ".join(missing)
                elif rec is None:
                    step.action, step.reason = "update", "exists but was not applied by this state; adopt it"
                elif rec.fingerprint == "pending":
                    step.action, step.reason = "update", "an earlier apply stopped during this step"
                elif rec.fingerprint != f:
                    rotated = rec.attrs.get("versions") != self._versions_of(t, prefix)
                    step.action = "update"
                    step.reason = "secret rotated" if rotated else "tenant slice changed"
                if step.action == "no-op":
                    self.add(step)
                    continue
                self.add(step, missing if step.action == "update" and missing else addrs)
            recorded: dict[str, set[str]] = {a.split(".", 2)[2]: set() for a in self.real.applied if a.startswith(f"tenant.{prefix}.")}
            for user, have in sorted({**recorded, **seen}.items()):
                if user in names:
                    continue
                sid = f"tenant.{prefix}.{user}"
                rec = self.real.applied.get(sid)
                if rec is None or "tenant" not in rec.attrs:
                    self.notes.append(f"{b.name} holds {len(have)} resources of {user}, which this state did not "
                                      f"create; left alone")
                    continue
                why = "site is being taken down" if self.destroy else f"user {user} is no longer in the site"
                self.add(Step(sid, "tenant", "delete", why, 0, user, sorted(have) or [sid],
                              payload=(b, tenant_from(rec.attrs["tenant"]))))

    def _versions_of(self, t: Tenant, prefix: str) -> dict:
        return {k: self.versions.get((t.user, k), 0) for k in A.BACKEND_KEYS.get(prefix, ())}

    # ---- traefik files -------------------------------------------------------------------------

    def _traefik(self, containers: list[Container]) -> None:
        by_file = {c.traefik_file: c for c in containers}
        wanted = {p[len(TRAEFIK_DIR):]: f for p, f in self.files.items() if p.startswith(TRAEFIK_DIR)}
        for name, f in sorted(wanted.items()):
            addr = A.traefik_file(name)
            sha = digest(f.content)
            have = self.real.traefik.get(name)
            c = by_file.get(name)
            step = Step(addr, "traefik", "no-op", "content as planned", c.phase if c else 0,
                        c.name if c is not None and c.role == "user" else None, [addr], fingerprint=sha,
                        payload=(name, f))
            if have is None:
                step.action, step.reason = "create", "file missing"
            elif have != sha:
                step.action, step.reason = "update", "content differs"
            if c is not None:
                step.deps.add(A.container(c.ctid))
            self.add(step)
        recorded = {r.attrs.get("file"): r for r in self.real.applied.values() if r.kind == "traefik"}
        for name in sorted(set(self.real.traefik) | set(recorded) - {None}):
            addr = A.traefik_file(name)
            if name in wanted or addr not in self.real.applied:
                continue  # files this site never wrote are not ours to delete
            rec = self.real.applied[addr]
            self.add(Step(addr, "traefik", "delete", "route no longer in the site", 0, rec.owner, [addr],
                          payload=(name, None)))

    # ---- user bundles --------------------------------------------------------------------------

    def _bundles(self, tenants: list[Tenant]) -> None:
        if self.r is None:  # tenants come from the resolved site: none without it
            return
        for t in tenants:
            prefix = f"users/{t.user}/"
            files = {p[len(prefix):]: f for p, f in self.files.items() if p.startswith(prefix)}
            if not files:
                continue
            addr = A.bundle(t.user)
            f = fp(sorted((p, x.mode, digest(x.content)) for p, x in files.items()))
            rec = self.real.applied.get(addr)
            cstep = self.steps.get(A.container(t.ctid))
            step = Step(addr, "bundle", "no-op", "pushed as planned", 0, t.user, [addr], fingerprint=f,
                        payload=(t, files))
            if cstep is not None and cstep.action in ("create", "replace"):
                step.action, step.reason = ("create" if rec is None else "update"), "container is new"
            elif rec is None:
                step.action, step.reason = "create", "never pushed"
            elif rec.fingerprint != f:
                step.action, step.reason = "update", "files changed (configuration or a rotated secret)"
            step.phase = self.r.container(t.ctid).phase
            step.deps.add(A.container(t.ctid))
            step.deps.update(s for s in self.steps if s.startswith("tenant.") and s.endswith(f".{t.user}"))
            self.add(step)

    # ---- slots of users gone before their container existed ----------------------------------

    def _allocations(self, tenants: list[Tenant]) -> None:
        """An active slot whose user left the site and has no container: mark it removed (kept until purge)."""
        names = {t.user for t in tenants}
        for user, ctid in sorted(self.real.active.items()):
            if user in names or ctid in self.real.containers:
                continue
            addr = f"allocation.{user}"
            self.add(Step(addr, "allocation", "delete", f"user {user} is no longer in the site; the slot is kept "
                          "until purged", 0, user, [addr]))

    # ---- shared containers' configuration and the site's models -------------------------------

    def _services(self, containers: list[Container]) -> None:
        from aicommons.engine.services import digests, files_of, system_files

        if not self.real.services:
            return
        only = None if self.real.services is True else self.real.services
        for c in containers:
            files = files_of(self.files, c.hostname) if c.role == "shared" else {}
            if only is not None:
                files = {r: f for r, f in files.items() if c.name in only and r in system_files(c.name)}
            if not files:
                continue
            addr = f"service.{c.hostname}"
            f = fp(digests(files))
            rec = self.real.applied.get(addr)
            cstep = self.steps.get(A.container(c.ctid))
            fresh = cstep is not None and cstep.action in ("create", "replace")
            step = Step(addr, "service", "no-op", "configured as planned", c.phase, None, [addr], fingerprint=f,
                        payload=(c, files, fresh))
            if fresh:
                step.action, step.reason = ("create" if rec is None else "update"), "container is new"
            elif rec is None:
                step.action, step.reason = "create", "never configured"
            elif rec.fingerprint != f:
                old = rec.attrs.get("files", {})
                diff = sorted(r for r, h in digests(files).items() if old.get(r) != h) + sorted(set(old) - set(files))
                step.action, step.reason = "update", "changed: " + ", ".join(diff[:5])
            step.deps.add(A.container(c.ctid))
            self.add(step)

    def _after_their_role(self, containers: list[Container]) -> None:
        """A service whose PostgreSQL login the site's PostgreSQL configuration makes (the
        gateway's role, render/gatewaydb.py) starts once that configuration ran: at start it
        logs in and makes its tables, and would otherwise fail until the role exists."""
        pg = next((f"service.{c.hostname}" for c in containers if c.role == "shared" and c.name == "postgres"), None)
        if pg is None or pg not in self.steps:
            return
        for c in containers:
            step = self.steps.get(A.container(c.ctid))
            if c.role == "shared" and c.name in ROLE_FROM_POSTGRES and step is not None:
                step.deps.add(pg)

    def _service_buckets(self, containers: list[Container]) -> None:
        """A shared service's own object-store key and bucket (Langfuse's), made at apply time."""
        from aicommons.plan.policy import SERVICE_BUCKETS
        from aicommons.plan.secrets import SITE_SCOPE

        store = next((b for b in self.backends if callable(getattr(b, "ensure_service", None))), None)
        if store is None or self.destroy:
            return
        by_name = {c.name: c for c in containers if c.role == "shared"}
        for service, (bucket, *keys) in sorted(SERVICE_BUCKETS.items()):
            c = by_name.get(service)
            if c is None:
                continue
            addr = f"s3.service.{service}"
            f = fp(bucket, [(k, self.versions.get((SITE_SCOPE, k), 0)) for k in keys])
            rec = self.real.applied.get(addr)
            step = Step(addr, "s3service", "no-op", "key and bucket as planned", 0, None,
                        [addr, f"s3.bucket.{bucket}"], fingerprint=f, payload=(store, service))
            if rec is None:
                step.action, step.reason = "create", f"{service} needs its bucket {bucket} and key"
            elif rec.fingerprint != f:
                step.action, step.reason = "update", "key rotated"
            for other in containers:  # after the object store is up; before the service starts
                if other.role == "shared" and other.name in ("garage", "minio"):
                    step.phase = max(step.phase, other.phase)
                    step.deps.update({A.container(other.ctid), f"service.{other.hostname}"})
            self.add(step)
            if step.action != "no-op" and f"service.{c.hostname}" in self.steps:
                self.steps[f"service.{c.hostname}"].deps.add(addr)

    def _ollama(self, containers: list[Container]) -> None:
        from aicommons.engine.services import OLLAMA_MODELS

        o = self.real.ollama
        if o is None or self.destroy:
            return
        step = Step(OLLAMA_MODELS, "ollama", "no-op", "every model is present", 0, None, [OLLAMA_MODELS],
                    fingerprint=fp(sorted(o["wanted"])), payload=(o["url"], tuple(o["wanted"])))
        if o["missing"] is None:
            step.action, step.reason = "update", o["why"]
        elif o["missing"]:
            step.action, step.reason = "update", "missing " + ", ".join(o["missing"])
        for c in containers:
            if c.role == "shared" and c.name == "ollama":
                step.phase = max(step.phase, c.phase)
                step.deps.update({A.container(c.ctid), f"service.{c.hostname}"})
        self.add(step)

    # ---- firewall ------------------------------------------------------------------------------

    def _firewall(self) -> None:
        """One site-wide step once the containers exist; the driver writes only what differs.

        New containers' rules cannot be read before they exist, so a plan that creates one
        always applies the firewall after it."""
        if self.real.firewall is None or self.destroy or self.r is None:
            return
        made = [s for s in self.steps.values() if s.kind == "container" and s.action in ("create", "replace")]
        addrs = list(dict.fromkeys([f"firewall.{x}" for x in self.real.firewall] +
                                   [f"firewall.container.{s.payload.ctid}" for s in made]))
        step = Step(FIREWALL, "firewall", "no-op", "rules as planned", 0, None, [FIREWALL],
                    fingerprint=fp(sorted(self.real.firewall)), payload=self.r)
        if addrs:
            step.action = "update" if FIREWALL in self.real.applied else "create"
            diff = f"{len(self.real.firewall)} firewall objects differ" if self.real.firewall else ""
            step.reason = "; ".join(x for x in (diff, f"{len(made)} new containers need their rules" if made else "") if x)
        step.deps.update(s.id for s in self.steps.values() if s.kind == "container" and s.action != "delete")
        self.add(step, addrs or None)

    # ---- ordering ------------------------------------------------------------------------------

    def _gates(self) -> None:
        """Phase gates (shared containers of earlier phases) and delete ordering."""
        for s in self.steps.values():
            if s.kind == "tenant" and s.action != "delete" and self.r is not None and s.owner is not None:
                s.phase = self.r.container(self.r.tenant(s.owner).ctid).phase
        shared = [s for s in self.steps.values() if (s.kind == "service" or s.kind == "container" and s.owner is None)
                  and s.action != "delete"]
        for s in self.steps.values():
            if s.action == "delete":
                continue
            s.deps.update(g.id for g in shared if g.phase < s.phase)
        deletes = [s for s in self.steps.values() if s.action == "delete"]
        # A user's PostgreSQL slice goes first: it is the one a tenant can try to make fail (objects
        # elsewhere, grants), and a failure there must leave the rest of the user untouched.
        pg_first = {d.owner: d.id for d in deletes if d.kind == "tenant" and d.id.startswith("tenant.postgres.")}
        for s in deletes:
            if s.owner in pg_first and s.id != pg_first[s.owner]:
                s.deps.add(pg_first[s.owner])
        for s in deletes:  # routes and tenant data go before the container; shared services go last
            if s.kind == "container" and s.owner:
                s.deps.update(d.id for d in deletes if d.owner == s.owner and d.kind != "container")
            elif s.kind == "container":
                s.deps.update(d.id for d in deletes if d.kind != "container" or d.owner)
            elif s.kind == "container":  # a shared server goes only after the tenant slices it holds
                s.deps.update(d.id for d in deletes if d.kind == "tenant")
        for s in self.steps.values():
            s.deps = {d for d in s.deps if d in self.steps and d != s.id}
