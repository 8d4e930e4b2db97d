"""The compute-driver contract: what the engine needs from Proxmox VE or plain LXC.

Shaped like JupyterHub's Spawner: a narrow lifecycle plus read-back (`ComputeDriver`, required).
Every method is idempotent where it can be (creating an existing container with the same spec
is a no-op), and raises `aicommons.errors.TemporaryError` (retry) or `PermanentError` (don't).
A driver that retries its own calls raises PermanentError once it gives up: the engine retries
only TemporaryError, so retries never nest.

Optional capabilities are the Protocols below, one per capability; a driver has one by defining
its members (no registration). This is the one place a driver's author reads; docs/architecture.md
has the same table. What the engine does with each, and without it:

| Protocol            | member(s)                                | engine, when present / when absent            |
|---------------------|------------------------------------------|-----------------------------------------------|
| `ChecksPlans`       | `check(plan)`                            | called after planning, before any change;     |
|                     |                                          | raises PermanentError to refuse the whole     |
|                     |                                          | plan (Proxmox: ACL, storage, placement of     |
|                     |                                          | every new container) / no pre-check           |
| `TakesNotes`        | `take_notes(ctid) -> list[str]`          | warnings gathered while creating/updating a   |
|                     |                                          | container, shown with its step / none         |
| `Archives`          | `archive(ctid) -> location`              | a container's data kept before it is deleted /|
|                     |                                          | deletes are refused unless `--purge`          |
| `HasTraefikTarget`  | `traefik_target() -> FileTarget | None`  | where Traefik's dynamic files go (None: none) |
|                     |                                          | / the site's `traefik.dynamic_dir` here       |
| `ConfiguresServices`| `configures_services: bool`              | True: the driver installs shared services by  |
|                     |                                          | its own recipes and the engine delivers only  |
|                     |                                          | their system config files / all files         |
| `SkipsServices`     | `skipped_services(resolved) -> {name: why}` | services it cannot run here: no tenant     |
|                     |                                          | slices, no models, no files for them / none   |
| `BindsSecrets`      | `bind_secrets(lookup)`                   | given the secret store's lookup before apply  |
| `BindsControlPlane` | `bind_control(plane)`                    | site file, state, key for aicommons services  |
|                     |                                          | (service recipes need admin passwords)        |
| `ServiceUrls`       | `service_url(service) -> str | None`     | where this process reaches a shared service   |
|                     |                                          | (e.g. Ollama's pulls) / the planned address   |
| `AppliesFirewall`   | `apply_firewall(resolved, *, dry_run)`   | a `firewall` step applies the rendered policy |
|                     |                                          | / no firewall step                            |
| `DiffsFirewall`     | `firewall_diff(resolved) -> list[str]`   | the step only when something differs / the    |
|                     |                                          | firewall step runs on every apply             |
| `SkipsCompose`      | `compose_skip_reason(tenant) -> str|None`| a bundle pushed but not started, with why /   |
|                     |                                          | compose always runs                           |
| `ManagesNetwork`    | `attach()`, `open_network()`,            | attach: on opening a session, reach a running |
|                     | `close_network()`                        | site's addresses; open: under the lock once   |
|                     |                                          | an apply is confirmed (host network, NAT,     |
|                     |                                          | Traefik); close: after the apply, under the   |
|                     |                                          | lock (tears down a site with no container) /  |
|                     |                                          | the network exists outside the control plane  |
| `RunsNativeApps`    | `run_native(tenant, root, files) -> str` | a native user bundle (runtime: native) is     |
|                     |                                          | started and waited for / pushed, not started  |
| `ReportsUsage`      | `usage(ctids) -> {ctid: Usage}`          | the portal shows memory/CPU / "not reported"  |
| `NotesHost`         | `host_notes(resolved) -> list[str]`      | `plan` says what the host lacks for the site  |
|                     |                                          | (limits, memory, disk, AppArmor) / nothing    |
| `AuditsHost`        | `audit_host(ctids) -> list[HostProbe]`   | `audit isolation` has a "host" section / none |
| `ReadsLimits`       | `read_limits(containers)`                | each container's limits read back from the    |
|                     | `-> list[LimitReading]`                  | kernel: `status` and `audit` fail on one not  |
|                     |                                          | as planned / limits taken on trust            |
| `Closes`            | `close()`                                | called when the engine/portal lets go of it   |

The engine tests each with `isinstance(driver, ChecksPlans)` etc. (engine/api.py, engine/steps.py);
a driver without `configures_services` that has `skipped_services` is still taken to configure
services itself (see docs/architecture.md).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from aicommons.drivers.targets import FileTarget
from aicommons.plan.model import Container, ResolvedSite, Tenant
from aicommons.plan.secrets import SecretLookup

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


# ---- optional capabilities (see the table in the module docstring) ----------------------------


@runtime_checkable
class ChecksPlans(Protocol):
    def check(self, plan: Any, *, purge: bool = False) -> None:
        """Refuse (PermanentError) a plan the back end cannot carry out whole, before any change.
        `plan` is the engine's Plan (engine/model.py; not imported: drivers sit below the engine);
        `purge`: removed containers are destroyed without an archive."""


@dataclass(frozen=True)
class HostProbe:
    """One attempt to get from a container to the host (or to another app's data), and what happened.
    `refused` False is a hole; None: the probe itself could not run (`detail` says why)."""

    ctid: int
    actor: str  # "root" inside, or an app's user
    probe: str  # e.g. "mknod b 254:0", "config: lxc.idmap"
    refused: bool | None
    detail: str = ""
    expect_refused: bool = True  # False: a control that must get through (the network section's allowed sources)


@runtime_checkable
class AuditsHost(Protocol):
    def audit_host(self, ctids: Iterable[int]) -> list[HostProbe]:
        """From inside each running container (and its config): can root there reach the host?"""


@runtime_checkable
class AuditsNetwork(Protocol):
    def audit_network(self, resolved: Any) -> list[HostProbe]:
        """From inside each running container: is every door the site's own filter shuts shut?"""


@dataclass(frozen=True)
class LimitReading:
    """One limit of a container as the kernel holds it, against what the plan asked."""

    ctid: int
    key: str  # the kernel's name for it, e.g. memory.limit_in_bytes, cpu.max, cpuset.cpus
    wanted: str
    found: str
    ok: bool

    def __str__(self) -> str:
        return f"CT {self.ctid} {self.key}: wanted {self.wanted}, found {self.found}"


@runtime_checkable
class ReadsLimits(Protocol):
    def read_limits(self, containers: Iterable[Container]) -> list[LimitReading]:
        """The running containers' limits read back from the kernel, one reading per limit the plan sets."""


@runtime_checkable
class NotesHost(Protocol):
    def host_notes(self, resolved: Any) -> list[str]:
        """What this host lacks to hold the whole site, said by `plan` before any apply."""


@runtime_checkable
class TakesNotes(Protocol):
    def take_notes(self, ctid: int) -> list[str]:
        """Warnings gathered for this container since last asked."""


@runtime_checkable
class Archives(Protocol):
    def archive(self, ctid: int) -> Any:
        """Keep a copy of the container's data (before destroy); returns where it went."""


@runtime_checkable
class HostLocal(Protocol):
    def on_its_host(self) -> bool:
        """False where this driver's containers cannot be seen (plain LXC read from inside one of
        its own containers, as the portal runs): an empty list then says nothing about them."""


@runtime_checkable
class HasTraefikTarget(Protocol):
    def traefik_target(self) -> FileTarget | None:
        """Where the engine writes Traefik's dynamic files (None: this driver has no place)."""


@runtime_checkable
class ConfiguresServices(Protocol):
    configures_services: bool


@runtime_checkable
class SkipsServices(Protocol):
    def skipped_services(self, resolved: ResolvedSite) -> dict[str, str]:
        """Shared services this driver cannot run here: name -> why."""


@runtime_checkable
class BindsSecrets(Protocol):
    def bind_secrets(self, lookup: SecretLookup) -> None: ...


@dataclass(frozen=True)
class ControlPlane:
    """What an aicommons service in a container (the portal) runs against: the operator's site
    file, the state (an SQLite path or a postgresql:// URL) and, read only when a service is
    deployed, the environment entries that give it the secrets key (never printed)."""

    site_file: Path
    state: str
    key_env: Callable[[], dict[str, str]]

    @property
    def state_is_url(self) -> bool:
        return self.state.startswith(("postgresql://", "postgres://"))


@runtime_checkable
class BindsControlPlane(Protocol):
    def bind_control(self, plane: ControlPlane) -> None: ...


@runtime_checkable
class ServiceUrls(Protocol):
    def service_url(self, service: str) -> str | None:
        """Where this process reaches a shared service (None: nowhere it may dial)."""


@runtime_checkable
class AppliesFirewall(Protocol):
    def apply_firewall(self, resolved: ResolvedSite, *, dry_run: bool = False) -> Any:
        """Apply the rendered firewall policy, writing only what differs; returns a report."""


@runtime_checkable
class DiffsFirewall(Protocol):
    def firewall_diff(self, resolved: ResolvedSite) -> list[str]:
        """What apply_firewall would change (read only); [] when nothing."""


@runtime_checkable
class SkipsCompose(Protocol):
    def compose_skip_reason(self, tenant: Tenant) -> str | None:
        """Why a user's bundle cannot be started here (None: it can)."""


@runtime_checkable
class ManagesNetwork(Protocol):
    """A driver that makes the site's network on the host itself (LXC: a namespace, NAT, Traefik)."""

    def attach(self) -> None:
        """Make the site's addresses reachable from this process if the site is up (never creates)."""

    def open_network(self) -> None:
        """Create what the site's network needs; apply calls it under the lock, once confirmed."""

    def close_network(self) -> None:
        """After an apply: remove the network once no container of the site is left."""


@runtime_checkable
class RunsNativeApps(Protocol):
    """A driver that runs a user's native bundle (systemd units on the shared app layers)."""

    def run_native(self, t: Any, root: str, files: dict[str, Any]) -> str:
        """Install and start the bundle pushed to `root`; return when every app answers (a note)."""
        ...


@runtime_checkable
class ReportsUsage(Protocol):
    def usage(self, ctids: Iterable[int]) -> dict[int, Usage]: ...


@runtime_checkable
class Closes(Protocol):
    def close(self) -> None: ...


CAPABILITIES: tuple[type, ...] = (
    ChecksPlans, TakesNotes, Archives, HasTraefikTarget, ConfiguresServices, SkipsServices, BindsSecrets,
    ServiceUrls, AppliesFirewall, DiffsFirewall, SkipsCompose, ManagesNetwork, RunsNativeApps, ReportsUsage,
    Closes, NotesHost, AuditsHost, AuditsNetwork, HostLocal, BindsControlPlane, ReadsLimits,
)


def capabilities(driver: object) -> list[str]:
    """The optional capabilities `driver` has, by Protocol name (for reports and tests)."""
    return [c.__name__ for c in CAPABILITIES if isinstance(driver, c)]
