"""The resolved site: every container, route and tenant slice, computed from site.yaml.

Plain frozen dataclasses (not pydantic): a 5,000-user plan builds ~45,000 of these and must
stay fast. `to_dict()` gives the JSON shape `aicommons plan --json` prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from aicommons.spec.models import Site

if TYPE_CHECKING:
    from aicommons.plan.models import ModelUnit

Role = Literal["shared", "user"]


@dataclass(frozen=True, slots=True)
class Container:
    ctid: int
    ip: str
    prefixlen: int
    gateway: str
    hostname: str
    role: Role
    name: str  # service name (shared) or user name (user)
    services: tuple[str, ...]
    phase: int
    memory_mb: int
    cores: int
    disk_gb: int
    traefik_file: str
    node: str | None = None
    instance: int = 1  # 1-based instance number of a scaled shared service
    gpu: str = "none"


@dataclass(frozen=True, slots=True)
class Route:
    host: str
    url: str  # first backend
    urls: tuple[str, ...]  # every backend (load balanced when > 1)
    service: str  # catalog service or app name
    ctid: int  # container whose traefik file holds the route
    traefik_file: str
    kind: Literal["http", "tcp"] = "http"
    owner: str | None = None  # user name for per-user routes
    # From the catalog: owner (forward-auth admitting only the owner), site-users (forward-auth,
    # any site user), operator (operator sources only), public (software with its own login).
    access: Literal["owner", "site-users", "operator", "public"] = "public"
    health_path: str = "/"
    own_login: bool = True  # False: never routed unless forward-auth protects it
    public_paths: tuple[str, ...] = ()  # paths that skip sign-in (the app checks them itself)


@dataclass(frozen=True, slots=True)
class Tenant:
    """One user's isolated slice of every shared back end (names only, never secrets)."""

    user: str
    email: str | None
    ctid: int
    ip: str
    postgres_role: str
    databases: tuple[str, ...]
    redis_user: str
    redis_prefix: str
    redis_db: int | None  # only with the reference architecture's (non-)isolation by DB number
    qdrant_prefix: str
    qdrant_collections: tuple[str, ...]
    buckets: tuple[str, ...]
    s3_key_name: str
    apps: tuple[str, ...]
    ports: dict[str, int]
    hosts: dict[str, str]
    qdrant_vector_size: int = 384  # the site's embedding dimensions (state records before it had none)
    operator: bool = False  # also an operator (site.yaml users[].operator): the provider's operators group
    gateway: bool = False  # has a model-gateway key (services.gateway is enabled)
    # Its own Redis server's port in the Redis container (redis.isolation=instance); None: its ACL
    # user lives in the shared server (and state records from before instances).
    redis_port: int | None = None


def own_redis_mb(site: Site, tenants: list[Tenant] | tuple[Tenant, ...]) -> int:
    """What the users' own Redis servers take of the Redis container: each one's bound. The plan
    adds it to the container and the shared server's redis.conf leaves it out: one sum for both."""
    return sum(1 for t in tenants if t.redis_port is not None) * site.redis.user_server_mb()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a shared service is reached: a container of the site or an `external:` server."""

    service: str
    host: str
    ports: dict[str, int]
    external: bool = False


@dataclass
class Totals:
    containers: int
    shared_containers: int
    user_containers: int
    service_instances: int
    app_instances: int
    memory_gb: float
    disk_tb: float
    cores: int


REFERENCE_FIGURES = {
    "containers": "~86 (36 shared + 50 users)",
    "shared_containers": "~36 (33 unique: faster-whisper and openedai-speech are listed twice)",
    "user_containers": "50",
    "service_instances": "~436 (36 shared + 50 x 8)",
    "app_instances": "400 (8 per user)",
    "memory_gb": "512-912",
    "disk_tb": "6.3-11.3",
    "cores": "not stated",
}


@dataclass(frozen=True, slots=True)
class Certificate:
    """One Let's Encrypt certificate: `name` is stable (cert-1, ...), `hosts` its names (main first)."""

    name: str
    hosts: tuple[str, ...]
    wildcard: bool = False


@dataclass
class ResolvedSite:
    site: Site
    containers: list[Container]
    routes: list[Route]
    tenants: list[Tenant]
    endpoints: dict[str, Endpoint]
    totals: Totals
    proxy_ip: str
    proxy_file: str
    notes: list[str] = field(default_factory=list)
    # operator_allow minus every user range: who may reach operator routes, pg_hba's superuser
    # line and the firewall's operator set (one list for all three).
    operator_sources: tuple[str, ...] = ()
    # Where Traefik's connections to the containers come from (plan/access.py proxy_source): the
    # one address user containers admit on their app ports, and every "trusted proxy" setting.
    proxy_source: str = ""
    certificates: tuple[Certificate, ...] = ()
    certificate_changes: dict[str, str] = field(default_factory=dict)  # name -> new/changed/removed
    # What the driver does not deploy (service -> reason), what the runtime cannot run (app ->
    # reason) and each app's fallback for a missing back end (app -> service -> fallback).
    undeployed: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    fallbacks: dict[str, dict[str, str]] = field(default_factory=dict)
    runtime_notes: list[str] = field(default_factory=list)  # the above, as notes (also in `notes`)
    # The sign-in provider that runs on this site (identity.provider: "lemonldap" or "authentik"),
    # or None (plan/deployed.py sign_in_provider). Forward-auth, the identity headers and every
    # trust in them follow from it (plan/identity.py sign_in).
    sign_in: str | None = None
    # Routes left out because nothing would answer them, or nothing would sign people in
    # (service -> why; plan/deployed.py published_routes): `plan` says what a person will not have.
    withheld: dict[str, str] = field(default_factory=dict)
    model_units: tuple[ModelUnit, ...] = ()  # what llama-server runs, one per model file
    models_via_gateway: bool = False  # every app reaches models through the gateway (plan/resolve.py)

    def container(self, ctid: int) -> Container:
        for c in self.containers:
            if c.ctid == ctid:
                return c
        raise KeyError(ctid)

    def tenant(self, user: str) -> Tenant:
        for t in self.tenants:
            if t.user == user:
                return t
        raise KeyError(user)

    def to_dict(self) -> dict[str, object]:
        return {
            "site": self.site.name,
            "domain": self.site.domain,
            "driver": self.site.driver.kind,
            "proxy": {"ip": self.proxy_ip, "source": self.proxy_source, "traefik_file": self.proxy_file,
                      "dynamic_dir": self.site.network.traefik.dynamic_dir},
            "containers": [asdict(c) for c in self.containers],
            "routes": [asdict(r) for r in self.routes],
            "tenants": [asdict(t) for t in self.tenants],
            "endpoints": {k: asdict(v) for k, v in self.endpoints.items()},
            "totals": asdict(self.totals),
            "operator_sources": list(self.operator_sources),
            "certificates": [{**asdict(c), "change": self.certificate_changes.get(c.name, "kept")}
                             for c in self.certificates],
            "reference_figures": REFERENCE_FIGURES,
            "notes": list(self.notes),
            "runtime": self.site.user_template.runtime,
            "undeployed": dict(self.undeployed),
            "unavailable_apps": dict(self.unavailable),
            "sign_in": self.sign_in,
            "withheld_routes": dict(self.withheld),
            "fallbacks": {k: dict(v) for k, v in self.fallbacks.items()},
            "models_via_gateway": self.models_via_gateway,
            "models": [{"name": u.model.name, "kind": u.model.kind, "port": u.port, "threads": u.threads,
                        "source": u.model.package or u.model.path, "file": u.model.file}
                       for u in self.model_units],
        }
