"""Which tenancy back ends a site has, with their admin credentials.

Site-made servers use the site secrets (`plan.secrets.SITE_KEYS`); `external:` servers use the
admin credentials named in site.yaml (a literal, env: or file: reference). Nothing connects here:
a server that is down is reported when a back end is used, never faked.
"""

from __future__ import annotations

from pathlib import Path

from aicommons.catalog import load_catalog
from aicommons.plan.identity import sign_in
from aicommons.plan.model import ResolvedSite
from aicommons.plan.secrets import SITE_SCOPE, SecretLookup
from aicommons.spec.secretref import resolve_ref
from aicommons.tenancy.base import TenantBackend

# Admin users of servers the control plane creates itself (render writes the same names).
DEFAULT_ADMIN = {"postgres": "postgres", "redis": "admin", "minio": "aicommons-admin"}
TENANT_SERVICES = ("postgres", "redis", "qdrant", "garage", "minio", "langfuse")


def archive_dir(resolved: ResolvedSite, base_dir: Path) -> Path:
    """Where `remove` puts what it archives: <backups.dir>/removed (relative to the site file)."""
    d = Path(resolved.site.backups.dir).expanduser()
    return (d if d.is_absolute() else Path(base_dir) / d) / "removed"


def admin_credentials(resolved: ResolvedSite, service: str, secrets: SecretLookup, base_dir: Path,
                      secret_key: str) -> tuple[str, int, str, str]:
    """(host, port, admin user, admin password) for a shared service."""
    ov = resolved.site.services[service]
    ep = resolved.endpoints[service]
    port = next(iter(ep.ports.values()))
    if ov.external is not None:
        ext = ov.external
        if ext.admin_password is None:
            from aicommons.errors import PermanentError

            raise PermanentError(f"services.{service}.external.admin_password is not set; aicommons needs an "
                                 f"admin login to create tenants (use env:VAR or file:PATH)")
        password = resolve_ref(ext.admin_password, f"services.{service}.external.admin_password", base_dir)
        return ext.host, ext.port, ext.admin_user or DEFAULT_ADMIN.get(service, "admin"), password
    return ep.host, port, DEFAULT_ADMIN.get(service, "admin"), secrets(SITE_SCOPE, secret_key)


def backends_for(resolved: ResolvedSite, secrets: SecretLookup, base_dir: Path | str) -> list[TenantBackend]:
    base_dir = Path(base_dir)
    enabled = set(resolved.endpoints)
    archive = archive_dir(resolved, base_dir)
    out: list[TenantBackend] = []
    if "postgres" in enabled:
        from aicommons.tenancy.postgres import PostgresBackend

        host, port, user, pw = admin_credentials(resolved, "postgres", secrets, base_dir, "postgres_admin_password")
        out.append(PostgresBackend(host, port, user, pw, archive))
    if "redis" in enabled:
        from aicommons.tenancy.redis import RedisBackend

        host, port, user, pw = admin_credentials(resolved, "redis", secrets, base_dir, "redis_admin_password")
        from aicommons.plan.resolve import redis_instances

        own = redis_instances(resolved.site, load_catalog())
        rb = RedisBackend(host, port, user, pw, archive, own_servers=own,
                          require_own=resolved.site.services["redis"].external is None,
                          known={t.user: t.redis_port for t in resolved.tenants if t.redis_port},
                          user_memory_mb=resolved.site.redis.user_memory_mb,
                          user_clients=resolved.site.redis.user_clients)
        if resolved.site.redis.isolation == "db":
            rb.warnings.append("redis.isolation is `db`: DB numbers isolate nothing by themselves; aicommons "
                               "still confines each user to its key prefix and its own DB with ACLs")
        out.append(rb)
    if "qdrant" in enabled:
        from aicommons.tenancy.qdrant import QdrantBackend

        host, port, _user, key = admin_credentials(resolved, "qdrant", secrets, base_dir, "qdrant_api_key")
        out.append(QdrantBackend(url=f"http://{host}:{port}", api_key=key, archive_dir=archive,
                                 recreate_nonempty=resolved.site.embedding.recreate_nonempty))
    store = "minio" if "minio" in enabled else ("garage" if "garage" in enabled else None)
    if store:
        from aicommons.tenancy.objectstore import ObjectStoreBackend

        out.append(ObjectStoreBackend.for_site(resolved, store, secrets, base_dir, archive))
    if "postgres" in enabled and (s := sign_in(resolved)) is not None and s.provider == "lemonldap":
        from aicommons.render.lemonldap import schema_sql
        from aicommons.tenancy.lemonldap import LemonldapBackend

        host, port, user, pw = admin_credentials(resolved, "postgres", secrets, base_dir, "postgres_admin_password")
        # A site-made PostgreSQL runs the schema as part of its configuration; an external one here.
        ext = resolved.site.services["postgres"].external is not None
        schema = schema_sql(secrets(SITE_SCOPE, "lemonldap_db_password")) if ext else ""
        out.append(LemonldapBackend(host, port, user, pw, schema))
    if (s := sign_in(resolved)) is not None and s.provider == "authentik":
        from aicommons.tenancy.authentik import AuthentikBackend

        out.append(AuthentikBackend.for_site(resolved, secrets))
    if "gateway" in enabled and "postgres" in enabled:
        from aicommons.render.gatewaydb import PASSWORD_KEY, gateway_sql
        from aicommons.tenancy.gateway import GatewayBackend

        host, port, user, pw = admin_credentials(resolved, "postgres", secrets, base_dir, "postgres_admin_password")
        # The gateway's own role: a site-made PostgreSQL makes it in its configuration; an external one here.
        ext = resolved.site.services["postgres"].external is not None
        db = resolved.site.gateway.database
        out.append(GatewayBackend(host, port, user, pw, db, bootstrap=gateway_sql(secrets(SITE_SCOPE, PASSWORD_KEY), db)
                                  if ext else ""))
    if "langfuse" in enabled:
        from aicommons.tenancy.langfuse import LangfuseBackend

        out.append(LangfuseBackend.for_site(resolved, secrets, base_dir))
    return out
