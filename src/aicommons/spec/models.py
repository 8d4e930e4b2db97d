"""site.yaml, as pydantic models. The JSON Schema (`aicommons schema`) is generated from these.

Secret-bearing fields accept a literal, `env:VAR` or `file:PATH`; they are resolved only when a
driver or back end needs them (`aicommons.spec.secrets.resolve_ref`), never while planning.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from aicommons.spec import identity
from aicommons.spec.served import ServedModel

NAME_RE = r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$"
SITE_NAME_RE = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
DOMAIN_RE = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _absolute(path: str) -> str:
    if not path.startswith("/") or "/../" in path + "/" or "\x00" in path:
        raise ValueError(f"{path!r} is not an absolute path; the containers and the host read it from "
                         "wherever they run, so write it from / (e.g. /opt/traefik-stack/dynamic)")
    return path


AbsPath = Annotated[str, AfterValidator(_absolute)]
# Upper bounds that catch a typo (8192000 for 8192) before a driver asks a host for it: 1 TiB of
# memory is more than any node this runs on (Proxmox's schema has no maximum of its own).
MAX_MEMORY_MB = 1024 * 1024

SecretRef = Annotated[
    str,
    Field(
        description="A literal value, `env:VAR` (read from the environment) or `file:PATH` "
        "(read from a file). Prefer references: the site file is often committed.",
        min_length=1,
    ),
]


def parse_range(text: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """`10.0.5.200-10.0.5.249` -> (start, end). Raises ValueError with a readable message."""
    parts = [p.strip() for p in str(text).split("-")]
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not a range; write it as FIRST-LAST, e.g. 10.0.5.200-10.0.5.249")
    start, end = (ipaddress.IPv4Address(p) for p in parts)
    if int(end) < int(start):
        raise ValueError(f"range {text!r} ends before it starts")
    return start, end


class Traefik(Model):
    address: ipaddress.IPv4Address = Field(
        ipaddress.IPv4Address("10.0.4.10"), description="Where Traefik runs (the reference architecture: 10.0.4.10)."
    )
    dynamic_dir: AbsPath = Field("/opt/traefik-stack/dynamic", description="Traefik's file-provider directory.")
    file_pattern: str = Field(
        "2{o3:02d}{o4:03d}.yml",
        description="Dynamic file name per container; o3/o4 are the container IP's 3rd/4th octets. "
        "The default reproduces the reference architecture's 205{last octet}.yml and stays unique in other /24s.",
    )
    acme_email: str | None = None
    dns_provider: str | None = Field(
        None, description="Lego DNS provider name (e.g. cloudflare): enables DNS-01 and a wildcard certificate."
    )
    operator_allow: list[str] = Field(
        default_factory=lambda: ["10.0.0.0/16"],
        description="Source ranges allowed to reach operator tools (Portainer, Prometheus, Traefik API).",
    )

    @field_validator("file_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            name = v.format(o3=5, o4=100)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"bad pattern ({exc}); use the fields o3 and o4, e.g. 2{{o3:02d}}{{o4:03d}}.yml") from None
        if not name.endswith((".yml", ".yaml")) or "/" in name:
            raise ValueError("must name a .yml file in the dynamic directory (Traefik reads only .yml/.yaml/.toml)")
        if "{o4" not in v:
            raise ValueError("must contain {o4...}: every container needs its own file")
        return v


class Network(Model):
    subnet: ipaddress.IPv4Network = Field(ipaddress.IPv4Network("10.0.5.0/24"))
    gateway: ipaddress.IPv4Address = Field(ipaddress.IPv4Address("10.0.5.1"))
    bridge: str = Field("vmbr0", pattern=r"^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$")
    shared_range: str = Field("10.0.5.100-10.0.5.199", description="Shared-service addresses; CTID = last octet.")
    user_ranges: list[str] = Field(
        default_factory=lambda: ["10.0.5.200-10.0.5.249"],
        description="User-container addresses, filled in order. Ranges outside `subnet` live in their own "
        "/24 (gateway .1) and get CTID = third octet * 1000 + last octet.",
        min_length=1,
    )
    traefik: Traefik = Field(default_factory=Traefik)

    @field_validator("shared_range")
    @classmethod
    def _shared(cls, v: str) -> str:
        parse_range(v)
        return v

    @field_validator("user_ranges")
    @classmethod
    def _users(cls, v: list[str]) -> list[str]:
        for item in v:
            parse_range(item)
        return v


class Ssh(Model):
    user: str = "root"
    key_file: str = "~/.ssh/id_ed25519"
    known_hosts: str = "~/.ssh/known_hosts"
    port: int = Field(22, ge=1, le=65535)


class ProxmoxDriver(Model):
    kind: Literal["proxmox"] = "proxmox"
    api_url: str = Field(..., pattern=r"^https?://", description="e.g. https://pve1.example.org:8006")
    token_id: str = Field(..., pattern=r"^[^@\s]+@[^!\s]+![A-Za-z][A-Za-z0-9._-]*$", description="USER@REALM!TOKENID")
    token_secret: SecretRef
    verify_tls: bool = True
    ca_file: str | None = None
    nodes: list[str] = Field(..., min_length=1)
    storage: str = "local-lvm"
    template: str = Field(
        "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst", description="ostemplate volume id"
    )
    template_ctid: int = Field(9000, ge=100, le=999999999, description="CTID of the prepared user template")
    pool: str | None = "aicommons"
    backup_storage: str = Field("local", description="storage (content: backup) for vzdump archives of removed containers")
    ssh: Ssh = Field(default_factory=Ssh)
    pinned: dict[str, str] = Field(default_factory=dict, description="container name or CTID -> node")


def default_netns(site_name: str) -> str:
    """`aic-<name>`, or past the 15 characters a Linux name may have, a prefix and a hash of the whole."""
    full = f"aic-{site_name}"
    if len(full) <= 15:
        return full
    return f"aic-{site_name[:5].rstrip('-')}-{hashlib.sha256(site_name.encode()).hexdigest()[:5]}"


class LxcDriver(Model):
    kind: Literal["lxc"] = "lxc"
    lxcpath: str | None = Field(None, description="Where the site's containers live; default "
                                "/var/lib/aicommons/lxc-<site name>, so sites on one host never share it")
    netns: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]{0,14}$",
                              description="The site's network namespace; default aic-<site name> (shortened with "
                                          "a hash past 15 characters), so sites on one host never share it")
    cache_dir: AbsPath = "/var/cache/aicommons"
    mirror: str = "http://deb.debian.org/debian"
    # Debian's security archive: without it the containers' PostgreSQL, Redis, nginx and
    # LemonLDAP::NG stay at the release's versions, whatever fixes Debian has published since.
    security_mirror: str = Field("http://deb.debian.org/debian-security",
                                 description="Debian's security archive, on driver.mirror's host")
    nat: bool = True

    @model_validator(mode="after")
    def _security_on_the_mirror_host(self) -> LxcDriver:
        # The site's network lets containers reach the mirror's host and nothing else (netns.py).
        host, sec = urlparse(self.mirror).hostname, urlparse(self.security_mirror).hostname
        if not sec or sec != host:
            raise ValueError(f"driver.security_mirror {self.security_mirror!r} must be on driver.mirror's host "
                             f"({host}): containers reach only that host. Use e.g. http://{host}/debian-security")
        return self


class External(Model):
    """An existing server the site adopts instead of creating a container."""

    host: str
    port: int = Field(..., ge=1, le=65535)
    admin_user: str | None = None
    admin_password: SecretRef | None = None
    tls: bool = False


class ResourceOverride(Model):
    memory_mb: int | None = Field(None, ge=64, le=MAX_MEMORY_MB)
    cores: int | None = Field(None, ge=1)
    disk_gb: int | None = Field(None, ge=1)


class ServiceOverride(Model):
    enabled: bool = True
    address: ipaddress.IPv4Address | None = None
    addresses: list[ipaddress.IPv4Address] | None = Field(
        None, description="Explicit addresses when instances > 1 (first = primary)."
    )
    instances: int = Field(1, ge=1, le=16)
    resources: ResourceOverride | None = None
    version: str | None = None
    node: str | None = None
    external: External | None = None
    expose_tcp: bool = Field(False, description="Expose a non-HTTP service through Traefik as TCP with TLS.")


class UserResources(Model):
    memory_mb: int = Field(8192, ge=512, le=MAX_MEMORY_MB)
    cores: int = Field(4, ge=1)
    disk_gb: int = Field(100, ge=4)


class UserTemplate(Model):
    apps: list[str] = Field(
        default_factory=lambda: [
            "openwebui", "n8n", "jupyter", "code-server", "big-agi", "kotaemon", "chainforge", "flowise",
        ]
    )
    resources: UserResources = Field(default_factory=UserResources)
    runtime: Literal["docker", "native"] | None = Field(
        None,
        description="How each user's apps run: `docker` (the compose bundle, the reference design) or "
        "`native` (each app's published package as a systemd service under its own system user, from a "
        "shared read-only layer). Default: `native` on the lxc driver, `docker` on proxmox.",
    )


class User(Model):
    name: str = Field(
        ..., description="Lower-case letters, digits and '-', starting with a letter.", max_length=63
    )
    email: str = Field(..., description="Required: the identity provider signs the person in by it, sends "
                       "the invitation and password resets to it, and apps (Open WebUI) match them by it. "
                       "Unique across users; letters, digits and . _ % + - before the @.")
    operator: bool = Field(False, description="Also an operator: the portal's console and the operator-only "
                           "hosts (the identity provider's operators group).")
    slot: ipaddress.IPv4Address | None = Field(None, description="Fixed address in a user range.")
    resources: UserResources | None = None
    node: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(NAME_RE, v) or "--" in v:
            raise ValueError(
                f"{v!r} is not a valid user name: use lower-case letters, digits and single '-' "
                "(start with a letter, end with a letter or digit)"
            )
        if msg := identity.name_problem(v):
            raise ValueError(f"{msg}; pick another name")
        return v

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        if msg := identity.email_problem(v):
            raise ValueError(f"{v[:80]!r}{'...' if len(v) > 80 else ''} is not accepted: {msg}")
        return v


class RedisTenancy(Model):
    isolation: Literal["instance", "acl", "db"] = Field(
        "instance",
        description="`instance` (default): each user gets a Redis server process of its own in the Redis container "
        "(own port, `maxmemory`, `maxclients`, ACL), so one user can fill only its own memory and connections; the "
        "shared services keep the main server. `acl`: an ACL user and key prefix per user in the main server's DB 0 "
        "(data isolated, memory and connections shared: used for an `external:` Redis). `db`: the reference "
        "architecture's DB numbers — NOT isolation (any client may SELECT); kept only for existing sites.",
    )
    databases: int = Field(16, ge=1, le=100000, description="The server's `databases` setting.")
    first_db: int = Field(2, ge=0, description="With isolation=db, user N gets first_db + N - 1 (reference architecture: user1=DB2).")
    # Redis 7.0 src/config.c: maxmemory is a memory config (0 = unlimited, refused here); maxclients
    # min 1. The per-user bound; plan/resolve.py adds every user's to the Redis container.
    user_memory_mb: int = Field(64, ge=8, le=65536, description="With isolation=instance: each user's `maxmemory`.")
    user_clients: int = Field(64, ge=4, le=10000, description="With isolation=instance: each user's `maxclients`.")

    def user_clients_mb(self) -> int:
        """A user's own server's `maxmemory-clients`: its clients' buffers together."""
        return max(1, self.user_memory_mb // 4)

    def user_server_mb(self) -> int:
        """What one user's own server may hold in the Redis container: its data, its clients'
        buffers (a write admitted under maxmemory can still grow them) and the process itself
        (a redis-server 7.0 at rest: a few MB). Not the fork's copy-on-write while it snapshots."""
        return self.user_memory_mb + self.user_clients_mb() + 8


# Output dimensions of embedding models, from each model's own card (sentence-transformers config
# / Ollama library page). A model not listed needs `embedding.dimensions`.
EMBEDDING_DIMENSIONS = {
    "sentence-transformers/all-MiniLM-L6-v2": 384,  # Open WebUI's default RAG_EMBEDDING_MODEL
    "sentence-transformers/all-mpnet-base-v2": 768,
    "BAAI/bge-m3": 1024,
    "nomic-embed-text": 768,
    "mxbai-embed-large": 1024,
    "all-minilm": 384,
    "bge-m3": 1024,
    "snowflake-arctic-embed": 1024,
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
}


class Embedding(Model):
    """The site's embedding model: the apps embed with it and each user's Qdrant collections are
    created at its dimensions. A collection's dimensions are fixed when it is made: after a change,
    `apply` recreates the users' empty collections; one that already holds vectors is refused
    (named in the error) unless `recreate_nonempty` is set, which archives its points (JSON, as
    `users remove` does) and recreates it empty; the app then re-embeds (Open WebUI: Admin >
    Documents > Reindex)."""

    model: str = Field("sentence-transformers/all-MiniLM-L6-v2", min_length=1, max_length=200,
                       pattern=r"^[A-Za-z0-9._:/-]+$", description="Model name as the app's engine knows it.")
    engine: Literal["", "ollama", "openai"] = Field(
        "", description="Open WebUI's RAG_EMBEDDING_ENGINE: '' (built-in sentence-transformers), ollama, openai.")
    dimensions: int | None = Field(None, ge=1, le=65536, description="Needed for a model not in the known list.")
    recreate_nonempty: bool = False

    @model_validator(mode="after")
    def _known(self) -> Embedding:
        if self.dimensions is None and self.model not in EMBEDDING_DIMENSIONS:
            raise ValueError(f"the dimensions of {self.model!r} are not known; set embedding.dimensions "
                             f"(known models: {', '.join(sorted(EMBEDDING_DIMENSIONS))})")
        return self

    @property
    def size(self) -> int:
        return self.dimensions or EMBEDDING_DIMENSIONS[self.model]


class Secrets(Model):
    store: Literal["state"] = Field("state", description="Secrets live encrypted in the state store.")
    key_file: str = Field(".aicommons/secret.key", description="0600 key file (relative to the site file).")
    key_env: str = Field("AICOMMONS_SECRET_KEY", description="Environment variable that may hold the key.")


class Backups(Model):
    dir: str = "/var/backups/aicommons"
    daily: int = Field(7, ge=0)
    weekly: int = Field(4, ge=0)
    s3_url: str | None = None


IdentityProvider = Literal["lemonldap", "authentik"]
# What each driver can run as the sign-in provider (docs/design.md, "Sign-in"): Authentik ships only
# as container images, which the LXC driver cannot fetch; LemonLDAP::NG installs from Debian and is
# wired (install, configuration, enrollment) on the LXC driver.
PROVIDER_DEFAULT: dict[str, IdentityProvider] = {"lxc": "lemonldap", "proxmox": "authentik"}
PROVIDER_REFUSED: dict[tuple[str, str], str] = {
    ("lxc", "authentik"): "Authentik ships only as container images, which the lxc driver cannot fetch "
                          "(it installs from Debian's mirror only); use `identity: {provider: lemonldap}`",
    ("proxmox", "lemonldap"): "the proxmox driver does not configure LemonLDAP::NG (its recipe and enrollment "
                              "are wired for the lxc driver); use `identity: {provider: authentik}`",
}


class Identity(Model):
    provider: IdentityProvider | None = Field(
        None, description="Who signs people in: `lemonldap` (LemonLDAP::NG from Debian, users in the site's "
        "PostgreSQL) or `authentik`. Default: lemonldap on the lxc driver, authentik on proxmox. The "
        "provider's service must be enabled in `services` for anything to be published behind sign-in.")
    invitation_hours: int = Field(72, ge=1, le=24 * 30, description="How long an invitation link stays valid.")


class Smtp(Model):
    """Where the site's mail goes out (invitations, password resets)."""

    host: str = Field(..., min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.-]+$")
    port: int = Field(587, ge=1, le=65535)
    sender: str = Field(..., description="The From: address, e.g. aicommons@example.org.")
    username: str | None = None
    password: SecretRef | None = None
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="`starttls` (port 587), `tls` (implicit, port 465) or `none` (a relay on a "
        "trusted network only).")

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        if msg := identity.email_problem(v):
            raise ValueError(f"{v[:80]!r} is not accepted: {msg}")
        return v


class Budget(Model):
    """A spending limit per window: tokens and/or cost (in the price table's unit); unset = no limit."""

    period: Literal["day", "week", "month"] = Field("month", description="Window: UTC day, ISO week (Monday) or calendar month.")
    tokens: int | None = Field(None, ge=0, description="Prompt + completion tokens per window.")
    cost: float | None = Field(None, ge=0, description="Cost per window, in the unit of gateway.prices.")


class Price(Model):
    prompt: float = Field(0.0, ge=0, description="Cost per million prompt tokens.")
    completion: float = Field(0.0, ge=0, description="Cost per million completion tokens.")


class Upstream(Model):
    url: str = Field(..., pattern=r"^https?://[^\s]+$", description="OpenAI-compatible base URL, e.g. http://10.0.5.100:8080/v1")
    models: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._:/-]{1,200}$")]] = Field(
        ..., min_length=1, description="Model names the gateway offers and sends there.")


class Gateway(Model):
    """Settings of the model gateway (the `gateway` service): per-person keys, budgets that hold and
    usage, in front of every model server."""

    upstreams: list[Upstream] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget, description="Site default; `aicommons users budget` overrides per person.")
    prices: dict[str, Price] = Field(default_factory=dict, description="Per model; a model not listed costs 0.")
    default_max_tokens: int = Field(1024, ge=1, description="Reserved for a request that sets no max_tokens "
                                                            "(and sent upstream as its cap).")
    database: str = Field("aicommons_gateway", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                          description="Database on the site's PostgreSQL holding keys, budgets and usage.")

    @model_validator(mode="after")
    def _unique_models(self) -> Gateway:
        seen: set[str] = set()
        for up in self.upstreams:
            for m in up.models:
                if m in seen:
                    raise ValueError(f"model {m!r} is named by two upstreams; each model goes to one upstream")
                seen.add(m)
        return self


# An Ollama tag (a string) or a model file (a mapping): told apart by type, so an error names only the
# kind the entry is (not "should be a valid string" for a mapping with a wrong field).
ModelEntry = Annotated[
    Annotated[str, Tag("ollama-tag")] | Annotated[ServedModel, Tag("model-file")],
    Discriminator(lambda v: "ollama-tag" if isinstance(v, str) else "model-file"),
]


class Site(Model):
    version: Literal[1] = 1
    name: str = Field(..., pattern=SITE_NAME_RE)
    domain: str = Field(..., pattern=DOMAIN_RE, max_length=200)
    network: Network = Field(default_factory=Network)
    driver: ProxmoxDriver | LxcDriver = Field(..., discriminator="kind")
    object_storage: Literal["garage", "minio"] = "garage"
    services: dict[str, ServiceOverride] = Field(
        default_factory=dict, description="Shared services enabled (by catalog name), each with overrides."
    )
    user_template: UserTemplate = Field(default_factory=UserTemplate)
    users: list[User] = Field(default_factory=list)
    redis: RedisTenancy = Field(default_factory=RedisTenancy)
    embedding: Embedding = Field(default_factory=Embedding)
    secrets: Secrets = Field(default_factory=Secrets)
    backups: Backups = Field(default_factory=Backups)
    models: list[ModelEntry] = Field(
        default_factory=list,
        description="What the site's model server serves: Ollama tags (pulled once by Ollama), or model "
        "files llama-server serves (`{name, kind, package + file | path, sha256}`).")
    operator_email: str | None = None
    identity: Identity = Field(default_factory=Identity)
    smtp: Smtp | None = Field(None, description="Outgoing mail: invitations and password resets are e-mailed "
                              "when set (else `users add` prints the link).")
    gateway: Gateway = Field(default_factory=Gateway)

    @model_validator(mode="after")
    def _provider(self) -> Site:
        # The driver decides the default; a combination that cannot work is refused by `validate`
        # (plan/resolve.py, with the line of identity.provider).
        if self.identity.provider is None:
            self.identity.provider = PROVIDER_DEFAULT[self.driver.kind]
        return self

    @model_validator(mode="after")
    def _lxc_names(self) -> Site:
        # Per-site defaults: two LXC sites on one host never share a namespace or a container dir.
        d = self.driver
        if d.kind == "lxc":
            if d.netns is None:
                d.netns = default_netns(self.name)
            if d.lxcpath is None:
                d.lxcpath = f"/var/lib/aicommons/lxc-{self.name}"
        if self.user_template.runtime is None:  # the driver decides: LXC hosts reach no image registry
            self.user_template.runtime = "native" if self.driver.kind == "lxc" else "docker"
        return self

    @property
    def ollama_tags(self) -> list[str]:
        """The `models:` entries Ollama pulls (plain tags)."""
        return [m for m in self.models if isinstance(m, str)]

    @property
    def model_files(self) -> list[ServedModel]:
        """The `models:` entries llama-server serves (files)."""
        return [m for m in self.models if isinstance(m, ServedModel)]

    @model_validator(mode="after")
    def _model_names(self) -> Site:
        seen: set[str] = set()
        for m in self.model_files:
            if m.name in seen:
                raise ValueError(f"models: {m.name!r} is named twice; each model needs its own name")
            seen.add(m.name)
        return self

    @model_validator(mode="before")
    @classmethod
    def _services_shorthand(cls, data: Any) -> Any:  # the raw input, whatever it is (pydantic "before")
        # `services: {ollama: , qdrant: }` or a list of names both mean "enabled with defaults".
        if isinstance(data, dict):
            svc = data.get("services")
            if isinstance(svc, list) and all(isinstance(s, str) for s in svc):
                data = {**data, "services": {s: {} for s in svc}}
            elif isinstance(svc, dict):
                data = {**data, "services": {k: ({} if v is None else v) for k, v in svc.items()}}
        return data
