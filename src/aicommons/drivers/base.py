"""The compute-driver protocol: what the engine needs from Proxmox VE or plain LXC.

Shaped like JupyterHub's Spawner: a narrow lifecycle plus read-back. Every method is
idempotent where it can be (creating an existing container with the same spec is a no-op),
and raises `aicommons.errors.TemporaryError` (retry) or `PermanentError` (don't). A driver that
retries its own calls raises PermanentError once it gives up: the engine retries only
TemporaryError, so retries never nest.

Optional capabilities the engine uses when a driver has them:
- `check(plan) -> None`: called by `apply` after the plan is made and before anything changes;
  raises PermanentError to refuse the whole plan (e.g. Proxmox: the token lacks a privilege,
  the storage cannot hold linked clones, or the containers to create do not all fit the nodes
  - it places them all here, so a plan that does not fit is refused before any change).
- `take_notes(ctid) -> list[str]`: warnings gathered while creating/updating that container
  (e.g. a Proxmox task that ended `WARNINGS: N`); the engine reports them with the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from aicommons.plan.model import Container

Status = Literal["running", "stopped", "missing"]


@dataclass(frozen=True)
class ContainerState:
    """What a driver reads back about one container (for the engine's refresh and drift)."""

    ctid: int
    hostname: str
    status: Status
    ip: str | None = None
    node: str | None = None
    memory_mb: int | None = None
    cores: int | None = None
    disk_gb: int | None = None
    tags: tuple[str, ...] = ()
    digest: str | None = None  # driver's config digest (Proxmox `digest`)


@dataclass(frozen=True)
class ExecResult:
    rc: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass(frozen=True)
class Usage:
    """A running container's resource use now. Drivers that can read it offer
    `usage(ctids) -> dict[ctid, Usage]` (one call for many: Proxmox's /cluster/resources has all)."""

    memory_mb: float
    memory_limit_mb: int | None = None
    cpu_percent: float | None = None  # of the container's cores, averaged over the driver's sample


@dataclass
class DriverInfo:
    kind: str
    detail: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ComputeDriver(Protocol):
    kind: str

    def list_containers(self) -> list[ContainerState]:
        """Containers this site manages (identified by tag/name), whatever their status."""

    def get(self, ctid: int) -> ContainerState | None: ...

    def create(self, container: Container) -> None:
        """Create (user containers: clone the user template) and configure, not started."""

    def update(self, container: Container) -> None:
        """Bring memory/cores/disk/hostname/network in line with the plan."""

    def start(self, ctid: int) -> None: ...

    def stop(self, ctid: int) -> None: ...

    def destroy(self, ctid: int) -> None:
        """Remove the container; callers archive data first unless purging."""

    def exec(self, ctid: int, argv: list[str], *, stdin: bytes | None = None,
             timeout: float = 600) -> ExecResult: ...

    def push(self, ctid: int, data: bytes, dest: str, mode: int = 0o644) -> None: ...

    def wait_ready(self, ctid: int, timeout: float = 120) -> None:
        """Return once the container answers at its IP; raise TemporaryError on timeout."""
