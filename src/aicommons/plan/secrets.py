"""Which secrets exist, by name. State generates and stores them; renderers and back ends read them.

A secret is addressed by (scope, key): scope is a user name or `site`. Values never appear in a
plan; plans and renderers refer to them by these names.
"""

from __future__ import annotations

from collections.abc import Callable

from aicommons.plan.model import Tenant

# (scope, key) -> value. State provides the real one; tests pass a dict-backed lookup.
SecretLookup = Callable[[str, str], str]

SITE_SCOPE = "site"

# Site-wide secrets: admin credentials of the shared back ends the control plane creates.
SITE_KEYS = (
    "postgres_admin_password",
    "redis_admin_password",
    "qdrant_api_key",         # also the HS256 key that signs per-user Qdrant JWTs
    "s3_admin_token",         # Garage admin API bearer token (or MinIO root password)
    "s3_admin_access_key",
    "searxng_secret",
    "langfuse_salt",
    "langfuse_nextauth_secret",
    "langfuse_encryption_key",
    "langfuse_public_key",
    "langfuse_secret_key",
    "authentik_secret_key",
    "authentik_bootstrap_token",
    "grafana_admin_password",
    "lemonldap_key",          # LL::NG's `key`: encrypts what its sessions and tokens carry
    "lemonldap_db_password",  # its role in the site's PostgreSQL
    "gateway_db_password",    # the model gateway's role in the site's PostgreSQL (render/gatewaydb.py)
)

# Per-user secrets, generated once per tenant slice.
APP_KEYS = {
    "openwebui": ("webui_secret_key",),
    "n8n": ("n8n_encryption_key", "n8n_owner_password"),
    "kotaemon": ("kotaemon_admin_password",),
    "flowise": ("flowise_secret_key", "flowise_admin_password"),
}


def tenant_keys(t: Tenant) -> tuple[str, ...]:
    """Secret keys one tenant needs, derived from its slice."""
    keys = ["postgres_password", "redis_password"]
    if t.buckets:
        keys += ["s3_access_key", "s3_secret_key"]
    if t.gateway:
        keys.append("gateway_key")  # the person's model-gateway key (the gateway keeps only its hash)
    for app in t.apps:
        keys += APP_KEYS.get(app, ())
    return tuple(keys)
