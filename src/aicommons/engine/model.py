"""Plans as data: a closed set of actions, each change with a reason, grouped into steps.

A change is what the operator reads (one per resource address); a step is what the engine runs
(one container, one back end's slice of one user, one Traefik file, one user bundle, the site's
firewall, one shared container's configuration, the site's Ollama models). The JSON form
carries no secret and a fingerprint of site file + state, so a stale plan is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["no-op", "create", "update", "replace", "delete"]
ACTIONS: tuple[str, ...] = ("no-op", "create", "update", "replace", "delete")
PLAN_FORMAT = 1


@dataclass
class Change:
    address: str
    action: Action
    reason: str
    step: str

    def to_dict(self) -> dict:
        return {"address": self.address, "action": self.action, "reason": self.reason, "step": self.step}


@dataclass
class Step:
    id: str
    kind: Literal["container", "tenant", "traefik", "bundle", "allocation", "firewall", "service", "ollama", "s3service"]
    action: Action
    reason: str
    phase: int = 0
    owner: str | None = None
    addresses: list[str] = field(default_factory=list)
    deps: set[str] = field(default_factory=set)
    fingerprint: str = ""
    payload: Any = None  # runtime only: Container / (backend, Tenant) / file content / files

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "action": self.action, "reason": self.reason,
                "phase": self.phase, "owner": self.owner, "addresses": self.addresses, "deps": sorted(self.deps)}


@dataclass
class Plan:
    site_file: str
    fingerprint: str
    resolved: Any  # ResolvedSite (None when destroying everything)
    changes: list[Change]
    steps: dict[str, Step]  # only steps with something to do
    notes: list[str] = field(default_factory=list)
    destroy: bool = False

    @property
    def empty(self) -> bool:
        return not self.steps

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(ACTIONS, 0)
        for c in self.changes:
            out[c.action] += 1
        return out

    def to_dict(self) -> dict:
        r = self.resolved.to_dict() if self.resolved is not None else {"containers": [], "routes": []}
        return {
            "format": PLAN_FORMAT, "fingerprint": self.fingerprint, "site_file": self.site_file,
            "destroy": self.destroy, "summary": self.counts(),
            "changes": [c.to_dict() for c in self.changes if c.action != "no-op"],
            "steps": [s.to_dict() for s in self.steps.values()],
            "notes": self.notes,
            **{k: v for k, v in r.items() if k not in ("notes",)},
            "site_notes": r.get("notes", []),
        }


@dataclass
class Outcome:
    step: str
    status: Literal["ok", "failed", "skipped"]
    detail: str = ""
    attempts: int = 0


@dataclass
class ApplyResult:
    run_id: int | None
    plan: Plan
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status != "ok"]

    @property
    def ok(self) -> bool:
        return not self.errors
