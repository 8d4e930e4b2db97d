"""Pure policy the renderer and the tenancy back ends share: derived credentials, ACL rules, tokens.

Render writes these into config files; the back ends apply the same values through their admin
APIs. Kept here (no network client) so importing render loads no back-end library.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

import jwt

from aicommons.plan.model import Tenant
from aicommons.plan.redis_commands import denied_rules
from aicommons.plan.secrets import SITE_SCOPE, SecretLookup

# ---- Redis ------------------------------------------------------------------------------------

# Keyless commands that reveal or change other tenants' data or the whole server: the table with
# the reason for each is data in redis_commands.DENY (read from Redis 7.0's command table).
DENIED = denied_rules()


def password_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def acl_rules(t: Tenant, password: str, *, enabled: bool = True) -> list[str]:
    """ACL SETUSER arguments for a tenant (after the user name)."""
    db = f"+select|{t.redis_db}" if t.redis_db is not None else "+select|0"
    return ["reset", "on" if enabled else "off", "#" + password_hash(password), f"~{t.redis_prefix}*",
            "resetchannels", f"&{t.redis_prefix}*", "+@all", *DENIED, "+select|0", *([db] if db != "+select|0" else [])]


# ---- S3 (Garage / MinIO) ------------------------------------------------------------------------


def s3_credentials(access_secret: str, secret_secret: str) -> tuple[str, str]:
    """(access key id, secret key) in Garage's format (GK + 24 hex, 64 hex); MinIO accepts it too."""
    kid = "GK" + hashlib.sha256(b"aicommons-s3-id:" + access_secret.encode()).hexdigest()[:24]
    sec = hashlib.sha256(b"aicommons-s3-secret:" + secret_secret.encode()).hexdigest()
    return kid, sec


def tenant_credentials(secrets: Mapping[str, str]) -> tuple[str, str]:
    return s3_credentials(secrets["s3_access_key"], secrets["s3_secret_key"])


# Shared services with a bucket of their own: service -> (bucket, site secrets its key derives from).
# The control plane imports the key and creates and grants the bucket at apply time (the
# `s3.service.<name>` step); render/shared_compose.py gives the service the same key.
SERVICE_BUCKETS = {"langfuse": ("langfuse", "langfuse_s3_access_key", "langfuse_s3_secret_key")}


def service_credentials(service: str, secrets: SecretLookup) -> tuple[str, str]:
    """(access key id, secret) of a shared service's own key."""
    _bucket, a, b = SERVICE_BUCKETS[service]
    return s3_credentials(secrets(SITE_SCOPE, a), secrets(SITE_SCOPE, b))


# ---- Qdrant -------------------------------------------------------------------------------------

CONTROL = "aicommons_tenants"  # one point per user: {"user", "active"}
TOKEN_EXP = 2051222400  # 2035-01-01: tokens are long-lived; rotating qdrant_api_key revokes all


def token_claims(t: Tenant, exp: int = TOKEN_EXP) -> dict[str, Any]:
    """JWT RBAC claims: rw on the user's own collections only (a token without `access` could manage
    everything), valid only while the user's row in CONTROL says active (suspension)."""
    return {
        "exp": exp,
        "access": [{"collection": c, "access": "rw"} for c in t.qdrant_collections],
        "value_exists": {"collection": CONTROL,
                         "matches": [{"key": "user", "value": t.user}, {"key": "active", "value": True}]},
    }


def user_token(t: Tenant, api_key: str, exp: int = TOKEN_EXP) -> str:
    """The user's Qdrant API key (apps send it as `api-key`). Deterministic, so renders are stable."""
    return jwt.encode(token_claims(t, exp), api_key, algorithm="HS256")


# ---- PostgreSQL ---------------------------------------------------------------------------------

SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores in pg_authid (RFC 5802/7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    salt64, stored64, server64 = (base64.b64encode(b).decode() for b in (salt, stored_key, server_key))
    return f"SCRAM-SHA-256${iterations}:{salt64}${stored64}:{server64}"
# ---- model gateway ----------------------------------------------------------------------------

GATEWAY_KEY_PREFIX = "aic"


def gateway_key(user: str, token: str) -> str:
    """The key a person (and each of their apps) presents to the model gateway: `aic.USER.TOKEN`.
    The user name makes the lookup a primary-key read; the token (256 random bits, a site secret)
    is what authenticates. An app may append `~APP` (its label in usage, not part of the secret)."""
    return f"{GATEWAY_KEY_PREFIX}.{user}.{token}"


def gateway_key_hash(key: str) -> bytes:
    """What the gateway stores: sha256 of the whole key (a high-entropy token needs no slow hash)."""
    return hashlib.sha256(key.encode()).digest()


# ---- app accounts made at apply time (apps that cannot trust the site's sign-in) --------------

def login_email(t: Tenant, domain: str) -> str:
    """The e-mail an app account of the person is made with: theirs, else one on the site's domain."""
    return (t.email or f"{t.user}@{domain}").lower()  # n8n stores it lower-cased (ownership.service.js)


def login_password(secret: str) -> str:
    """The password of a pre-made app account, from its stored secret (token_urlsafe, 43 chars).

    Flowise 3.1.3 refuses a password without a lower-case letter, an upper-case letter, a digit
    and a special character (enterprise/utils/validation.util.js isInvalidPassword); a random
    token lacks one of them now and then, so one of each is put in front."""
    return "Aa1-" + secret


def bcrypt_hash(password: str, seed: str) -> str:
    """bcrypt of `password` with a salt derived from `seed`: the same text on every render, so an
    unchanged account does not restart its app. n8n 2.33.7 takes only a hash ($2a$/$2b$/$2y$,
    owner.instance-settings-loader.js BCRYPT_HASH_RE) and checks it with bcryptjs. Cost 8, not
    n8n's own 10: the password is 256 random bits (no guessing to slow down), and every render of
    a 50-user site hashes 50 of them."""
    return _bcrypt(password, seed)


_B64 = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"  # bcrypt's own alphabet


@functools.lru_cache(maxsize=256)
def _bcrypt(password: str, seed: str) -> str:
    import bcrypt

    digest = hashlib.sha256(b"aicommons-bcrypt-salt\0" + seed.encode()).digest()
    bits = int.from_bytes(digest[:17], "big") >> 4  # 132 bits: 22 characters of 6 bits
    chars = "".join(_B64[(bits >> (6 * i)) & 63] for i in reversed(range(22)))
    chars = chars[:21] + _B64[_B64.index(chars[21]) & 0x30]  # the 22nd carries 2 bits (a canonical salt)
    return bcrypt.hashpw(password.encode(), f"$2b$08${chars}".encode()).decode()
