"""Configuration of the shared back ends the tenants use: PostgreSQL, Redis, Qdrant, SearXNG,
Ollama and the object store (Garage, or MinIO on existing sites)."""

from __future__ import annotations

import hashlib

from aicommons.plan.model import Container, ResolvedSite, Tenant, own_redis_mb
from aicommons.plan.policy import acl_rules
from aicommons.plan.secrets import SITE_SCOPE, SecretLookup
from aicommons.render import gatewaydb, lemonldap
from aicommons.render.common import catalog, db_ident, dump_yaml, hex_key, svc_dir
from aicommons.render.files import SECRET_MODE, RenderedFile
from aicommons.spec.models import RedisTenancy

HEAD = "# Rendered by aicommons: do not edit by hand.\n"
# Shared services with their own database and role in the shared PostgreSQL.
REDIS_ADMIN = "admin"
REDIS_LANGFUSE = "langfuse"


def pg_clients(resolved: ResolvedSite) -> list[Container]:
    """Shared containers whose service keeps its data in the shared PostgreSQL."""
    cat = catalog()
    return [c for c in resolved.containers
            if c.role == "shared" and "postgres" in cat.services[c.name].depends_on]


def postgresql_conf(resolved: ResolvedSite, c: Container) -> str:
    """conf.d fragment: listen on the container's address, scram, enough connections for the tenants."""
    mem = c.memory_mb
    # In steps of 50 users, so adding or removing one user does not change it (a change needs
    # a restart, which cuts every tenant's connections).
    conns = 100 + 10 * 50 * max(1, -(-len(resolved.tenants) // 50))
    return HEAD + "\n".join([
        f"listen_addresses = 'localhost,{c.ip}'",
        "port = 5432",
        "password_encryption = 'scram-sha-256'",
        f"max_connections = {conns}",
        f"shared_buffers = '{max(128, mem // 4)}MB'",
        f"effective_cache_size = '{max(256, mem // 2)}MB'",
        "log_connections = on",
        "log_disconnections = on",
        "",
    ])


def admin_sources(resolved: ResolvedSite) -> list[str]:
    """Where the superuser may log in from over TCP: the operator sources (operator_allow minus
    the site's own containers, plan/access.py), the portal's container (it runs the control plane's
    user operations), and on the LXC driver the host itself (the control plane joins the site's
    network as its gateway)."""
    out = list(resolved.operator_sources)
    if (portal := resolved.endpoints.get("portal")) is not None and not portal.external:
        out.insert(0, f"{portal.host}/32")
    if resolved.site.driver.kind == "lxc":
        out.insert(0, f"{resolved.site.network.gateway}/32")
    return out


def pg_hba(resolved: ResolvedSite, sources: list[str] | None = None) -> str:
    """The one pg_hba.conf of every driver: first match wins, anything unmatched is refused.

    Each tenant role reaches only its own databases, only from its own container; a tenant
    container matches nothing else (not `postgres`, `template1` or another tenant's database,
    and not the superuser even where an operator range covers it); shared services reach their
    own database from their own container; the superuser comes from `sources`, and so do the
    audit's logins as each tenant (to that tenant's databases only)."""
    lines = [HEAD.rstrip(), "# TYPE  DATABASE  USER  ADDRESS  METHOD",
             "local   all  postgres  peer",
             "host    all  postgres  127.0.0.1/32  scram-sha-256"]
    for t in resolved.tenants:
        for db in t.databases:
            lines.append(f"host    {db}  {t.postgres_role}  {t.ip}/32  scram-sha-256  # {t.user}")
        lines.append(f"host    all  all  {t.ip}/32  reject  # {t.user}: nothing else")
    for c in pg_clients(resolved):
        ident = db_ident(c.name)
        # The gateway's database is named by the site (gateway.database); its role is still `gateway`.
        db = resolved.site.gateway.database if c.name == "gateway" else ident
        lines.append(f"host    {db}  {ident}  {c.ip}/32  scram-sha-256  # {c.hostname}")
    for cidr in admin_sources(resolved) if sources is None else sources:
        # `audit isolation` logs in from the control plane with each tenant's own password: there
        # too a tenant role reaches only its own databases.
        for t in resolved.tenants:
            if t.databases:
                lines.append(f"host    {','.join(t.databases)}  {t.postgres_role}  {cidr}  scram-sha-256")
        lines.append(f"host    all  postgres  {cidr}  scram-sha-256  # operators / control plane")
    return "\n".join(lines) + "\n"


def _redis_hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def tenant_acl(t, password: str) -> str:
    """A tenant's aclfile line: exactly the rules tenancy's `ACL SETUSER` applies (one source)."""
    return " ".join(["user", t.redis_user, *acl_rules(t, password)])


def redis_acl(resolved: ResolvedSite, secrets: SecretLookup) -> str:
    """users.acl: passwords only as SHA-256 hashes."""
    lines = ["user default off",
             f"user {REDIS_ADMIN} on {_redis_hash(secrets(SITE_SCOPE, 'redis_admin_password'))} ~* &* +@all"]
    if "langfuse" in resolved.endpoints:
        lines.append(f"user {REDIS_LANGFUSE} on {_redis_hash(secrets(SITE_SCOPE, 'langfuse_redis_password'))} "
                     "~* &* +@all -@dangerous +info")
    # Users with a server of their own (redis.isolation=instance) have no login in the shared one.
    lines += [tenant_acl(t, secrets(t.user, "redis_password")) for t in resolved.tenants if t.redis_port is None]
    return "\n".join(lines) + "\n"


USER_CONF_DIR = "/etc/redis/users"  # <user>.conf (root:redis) and <user>.acl (the server's: ACL SAVE)
USER_DATA_DIR = "/var/lib/redis/users"
USER_UNIT = "redis-user@"
USER_SCRIPT = "/etc/redis/aicommons-users.sh"


def redis_user_conf(t: Tenant, bind: str, redis: RedisTenancy, *, dir: str = "", aclfile: str = "") -> str:
    """redis.conf of one user's own server (redis.isolation=instance): its memory and connections
    are its own, so filling them takes nothing from another user or the shared services. Names
    and ranges are Redis 7.0's (src/config.c static_configs[]): maxmemory 0 would be unlimited,
    proto-max-bulk-len and client-query-buffer-limit have a 1mb minimum, maxclients 1."""
    mem = redis.user_memory_mb
    return HEAD + "\n".join([
        f"bind {bind}",
        f"port {t.redis_port}",
        "protected-mode yes",
        "daemonize no",
        'logfile ""',
        f"aclfile {aclfile or f'{USER_CONF_DIR}/{t.user}.acl'}",
        f"dir {dir or f'{USER_DATA_DIR}/{t.user}'}",
        "databases 1",
        "save 900 1 300 10 60 10000",
        "appendonly yes",
        "appendfsync everysec",
        f"maxmemory {mem}mb",
        "maxmemory-policy noeviction",
        f"maxclients {redis.user_clients}",
        f"proto-max-bulk-len {max(1, mem // 8)}mb",
        f"client-query-buffer-limit {max(1, mem // 2)}mb",
        f"maxmemory-clients {redis.user_clients_mb()}mb",
        f"client-output-buffer-limit normal {max(1, mem // 2)}mb {max(1, mem // 4)}mb 60",
        f"client-output-buffer-limit pubsub {max(1, mem // 4)}mb {max(1, mem // 8)}mb 60",
        "",
    ])


REDIS_USER_UNIT = f"""\
[Unit]
Description=Redis server of aicommons user %i
After=network.target
ConditionPathExists={USER_CONF_DIR}/%i.conf

[Service]
Type=simple
User=redis
Group=redis
ExecStart=/usr/bin/redis-server {USER_CONF_DIR}/%i.conf
Restart=always
RestartSec=2
UMask=0007

[Install]
WantedBy=multi-user.target
"""


def redis_users_script(resolved: ResolvedSite, c: Container, secrets: SecretLookup) -> str:
    """Creates, updates and removes the users' own Redis servers to match the site (0600: it holds
    the admin's and each user's password hash). A user's ACL file is written once: the server owns
    it afterwards (ACL SAVE keeps a suspension). A server whose user left is stopped and its data
    removed; the tenancy back end has archived its keys before (engine/planner.py orders it)."""
    own = [t for t in resolved.tenants if t.redis_port is not None]
    admin = f"user {REDIS_ADMIN} on {_redis_hash(secrets(SITE_SCOPE, 'redis_admin_password'))} ~* &* +@all"
    out = [HEAD.rstrip(), "set -eu", "umask 027",
           f"install -d -o redis -g redis -m 0750 {USER_CONF_DIR} {USER_DATA_DIR}",
           "want=' " + " ".join(t.user for t in own) + " '"]
    for t in own:  # names are validated identifiers ([a-z0-9-]): safe in a shell word
        u, conf, acl = t.user, f"{USER_CONF_DIR}/{t.user}.conf", f"{USER_CONF_DIR}/{t.user}.acl"
        out += [f"# {u}: port {t.redis_port}",
                f"install -d -o redis -g redis -m 0750 {USER_DATA_DIR}/{u}",
                f"if [ ! -s {acl} ]; then",
                f"cat > {acl} <<'AICOMMONS_EOF'",
                "user default off", admin, tenant_acl(t, secrets(u, "redis_password")), "AICOMMONS_EOF",
                f"chown redis:redis {acl}; chmod 0640 {acl}", "fi",
                f"cat > {conf}.new <<'AICOMMONS_EOF'",
                redis_user_conf(t, f"127.0.0.1 {c.ip}", resolved.site.redis).rstrip("\n"), "AICOMMONS_EOF",
                f"chown root:redis {conf}.new; chmod 0640 {conf}.new",
                f"if cmp -s {conf}.new {conf}; then rm -f {conf}.new; systemctl enable --quiet --now {USER_UNIT}{u}",
                f"else mv {conf}.new {conf}; systemctl enable --quiet {USER_UNIT}{u}; systemctl restart {USER_UNIT}{u}; fi"]
    out += [f"for f in {USER_CONF_DIR}/*.conf; do",
            '  [ -e "$f" ] || continue',
            '  u=$(basename "$f" .conf)',
            '  case "$want" in *" $u "*) continue ;; esac',
            f'  systemctl disable --quiet --now "{USER_UNIT}$u" || true',
            f'  rm -rf "{USER_DATA_DIR}/$u" "{USER_CONF_DIR}/$u.conf" "{USER_CONF_DIR}/$u.acl"',
            "done", ""]
    return "\n".join(out)


def shared_redis_mb(resolved: ResolvedSite, c: Container) -> int:
    """The shared server's part of the Redis container: the rest is the users' own servers'
    (plan/resolve.py adds theirs to the container), so adding a user leaves redis.conf as it was."""
    return c.memory_mb - own_redis_mb(resolved.site, resolved.tenants)


def redis_conf(resolved: ResolvedSite, c: Container, aclfile: str = "/etc/redis/users.acl") -> str:
    """redis.conf. The limits bound what one client can take from the others (issue 23); each name
    and range is Redis 7.0's own (src/config.c, standardConfig static_configs[])."""
    mem = shared_redis_mb(resolved, c)
    # Half for data: the rest is client buffers (capped below) and the copy-on-write of the fork
    # that writes the RDB snapshot / rewrites the AOF.
    maxmem = max(64, mem // 2)
    return HEAD + "\n".join([
        f"bind 127.0.0.1 {c.ip}",
        "port 6379",
        "protected-mode yes",
        "pidfile /run/redis/redis-server.pid",  # the Debian unit's PIDFile
        f"aclfile {aclfile}",
        f"databases {resolved.site.redis.databases}",
        "dir /var/lib/redis",
        "# Persistence: RDB snapshots plus an append-only file.",
        "save 900 1 300 10 60 10000",
        "appendonly yes",
        "appendfsync everysec",
        f"maxmemory {maxmem}mb",
        "# Langfuse's queues refuse any eviction policy but noeviction.",
        "maxmemory-policy noeviction",
        "# One command may allocate at most this much (SETRANGE/APPEND/SETBIT offsets, one argument;",
        "# config.c: min 1mb, default 512mb); with tenants' MULTI/EVAL denied the memory check then",
        "# runs before every command, so the server passes maxmemory by at most this.",
        "proto-max-bulk-len 8mb",
        "client-query-buffer-limit 32mb",
        "# All clients' buffers together (query, output, watched keys); past it the largest",
        "# clients are disconnected first (7.0 client eviction), never the small ones.",
        f"maxmemory-clients {max(16, mem // 8)}mb",
        "client-output-buffer-limit normal 64mb 16mb 60",
        "client-output-buffer-limit pubsub 32mb 8mb 60",
        "",
    ])


def qdrant_config(resolved: ResolvedSite, secrets: SecretLookup) -> str:
    doc = {"service": {"host": "0.0.0.0", "http_port": 6333, "grpc_port": 6334,
                       "api_key": secrets(SITE_SCOPE, "qdrant_api_key"), "jwt_rbac": True},
           "storage": {"storage_path": "/var/lib/qdrant/storage", "snapshots_path": "/var/lib/qdrant/snapshots"},
           "telemetry_disabled": True}
    return dump_yaml(doc, HEAD)


def searxng_settings(resolved: ResolvedSite, secrets: SecretLookup) -> str:
    doc = {"use_default_settings": True,
           "server": {"secret_key": secrets(SITE_SCOPE, "searxng_secret"), "limiter": False,
                      "image_proxy": False, "bind_address": "0.0.0.0", "port": 8080,
                      "base_url": f"https://searxng.{resolved.site.domain}/"},
           # JSON is what the apps ask for; without it SearXNG answers 403.
           "search": {"formats": ["html", "json"], "safe_search": 0}}
    return dump_yaml(doc, HEAD)


def ollama_override(resolved: ResolvedSite, c: Container) -> str:
    env = {"OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_MODELS": "/var/lib/ollama/models",
           "OLLAMA_NUM_PARALLEL": "4", "OLLAMA_MAX_LOADED_MODELS": "2", "OLLAMA_KEEP_ALIVE": "30m"}
    lines = ["# systemd drop-in: /etc/systemd/system/ollama.service.d/override.conf", "[Service]"]
    lines += [f'Environment="{k}={v}"' for k, v in env.items()]
    return "\n".join(lines) + "\n"


def garage_toml(resolved: ResolvedSite, c: Container, secrets: SecretLookup) -> str:
    rpc = hex_key(secrets(SITE_SCOPE, "garage_rpc_secret"))
    token = secrets(SITE_SCOPE, "s3_admin_token")
    return HEAD + "\n".join([
        'metadata_dir = "/var/lib/garage/meta"',
        'data_dir = "/var/lib/garage/data"',
        'db_engine = "lmdb"',
        "replication_factor = 1",
        'rpc_bind_addr = "[::]:3901"',
        f'rpc_public_addr = "{c.ip}:3901"',
        f'rpc_secret = "{rpc}"',
        "",
        "[s3_api]",
        'api_bind_addr = "[::]:3900"',
        's3_region = "garage"',
        'root_domain = ".s3.garage.localhost"',
        "",
        "[admin]",
        'api_bind_addr = "[::]:3903"',
        f'admin_token = "{token}"',
        "",
    ])


GARAGE_UNIT = """\
[Unit]
Description=Garage S3 object store (aicommons)
After=network-online.target
Wants=network-online.target

[Service]
Environment=RUST_LOG=garage=info
ExecStart=/usr/local/bin/garage -c /etc/garage.toml server
Restart=always
StateDirectory=garage

[Install]
WantedBy=multi-user.target
"""


def minio_env(secrets: SecretLookup) -> str:
    from aicommons.render.envfile import render_env

    return render_env({"MINIO_ROOT_USER": "aicommons-admin",
                       "MINIO_ROOT_PASSWORD": secrets(SITE_SCOPE, "s3_admin_token"),
                       "MINIO_VOLUMES": "/var/lib/minio", "MINIO_OPTS": "--console-address :9001"},
                      "/etc/default/minio (0600)")


def backend_files(resolved: ResolvedSite, secrets: SecretLookup) -> list[RenderedFile]:
    out: list[RenderedFile] = []
    for c in resolved.containers:
        if c.role != "shared":
            continue
        d = svc_dir(c.hostname)
        if c.name == "postgres":
            out += [RenderedFile(f"{d}/conf.d/aicommons.conf", postgresql_conf(resolved, c)),
                    RenderedFile(f"{d}/pg_hba.conf", pg_hba(resolved))]
            if any(x.name == "lemonldap" for x in resolved.containers):
                out.append(RenderedFile(f"{d}/lemonldap.sql",
                                        lemonldap.schema_sql(secrets(SITE_SCOPE, "lemonldap_db_password")),
                                        SECRET_MODE))
            if any(x.name == "gateway" for x in resolved.containers):
                out.append(RenderedFile(f"{d}/gateway.sql", gatewaydb.gateway_sql(
                    secrets(SITE_SCOPE, gatewaydb.PASSWORD_KEY), resolved.site.gateway.database), SECRET_MODE))
        elif c.name == "redis":
            out += [RenderedFile(f"{d}/redis.conf", redis_conf(resolved, c)),
                    RenderedFile(f"{d}/users.acl", redis_acl(resolved, secrets), SECRET_MODE),
                    RenderedFile(f"{d}/redis-user@.service", REDIS_USER_UNIT),
                    RenderedFile(f"{d}/redis-users.sh", redis_users_script(resolved, c, secrets), SECRET_MODE)]
        elif c.name == "qdrant":
            out.append(RenderedFile(f"{d}/config.yaml", qdrant_config(resolved, secrets), SECRET_MODE))
        elif c.name == "searxng":
            out.append(RenderedFile(f"{d}/settings.yml", searxng_settings(resolved, secrets), SECRET_MODE))
        elif c.name == "ollama":
            out.append(RenderedFile(f"{d}/systemd/override.conf", ollama_override(resolved, c)))
        elif c.name == "garage":
            out += [RenderedFile(f"{d}/garage.toml", garage_toml(resolved, c, secrets), SECRET_MODE),
                    RenderedFile(f"{d}/systemd/garage.service", GARAGE_UNIT)]
        elif c.name == "minio":
            out.append(RenderedFile(f"{d}/minio.env", minio_env(secrets), SECRET_MODE))
    return out + lemonldap.files(resolved, secrets)
