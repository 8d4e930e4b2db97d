"""Resource addresses: the stable names a plan, the state and the journal use for one thing.

`container.200`, `postgres.role.u_user1`, `postgres.database.openwebui_user1`,
`redis.user.u_user1`, `qdrant.collection.user1_files`, `s3.bucket.user1-openwebui`,
`traefik.file.205200`, `bundle.user1`.
"""

from __future__ import annotations

from aicommons.plan.model import Tenant

# Tenancy back ends whose name is not the address prefix (the S3 stores share `s3.`).
BACKEND_PREFIX = {"garage": "s3", "minio": "s3"}

# Which tenant secrets each back end consumes: rotating one re-runs only those back ends.
BACKEND_KEYS = {
    "postgres": ("postgres_password",),
    "redis": ("redis_password",),
    "s3": ("s3_access_key", "s3_secret_key"),
    "qdrant": (),
    "lemonldap": (),
    "gateway": ("gateway_key",),
}


def container(ctid: int) -> str:
    return f"container.{ctid}"


def traefik_file(name: str) -> str:
    stem = name.rsplit("/", 1)[-1]
    return f"traefik.file.{stem.rsplit('.', 1)[0]}"


def bundle(user: str) -> str:
    return f"bundle.{user}"


def prefix_of(backend_name: str) -> str:
    return BACKEND_PREFIX.get(backend_name, backend_name)


def tenant_addresses(t: Tenant) -> dict[str, list[str]]:
    """Per back-end prefix, the addresses one tenant's slice consists of."""
    out = {
        "postgres": [f"postgres.role.{t.postgres_role}"] + [f"postgres.database.{d}" for d in t.databases],
        "redis": [f"redis.user.{t.redis_user}"],
        "qdrant": [f"qdrant.collection.{c}" for c in t.qdrant_collections],
        "s3": [f"s3.bucket.{b}" for b in t.buckets],
        # the person in the sign-in provider (a back end only where the site signs in with LL::NG)
        "lemonldap": [f"lemonldap.user.{t.user}"],
        "gateway": [f"gateway.key.{t.user}"] if t.gateway else [],
    }
    return {k: v for k, v in out.items() if v}
