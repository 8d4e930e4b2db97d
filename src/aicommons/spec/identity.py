"""Rules for the names and e-mail addresses of site users (pure; used by site.yaml validation
and by `users add`, which validates through the same model).

Reserved names: a site user must never be mistaken for an account the platform or its parts
already own. From Authentik's source: `akadmin` (blueprints/system/bootstrap.yaml), the
django-guardian `AnonymousUser`, and service accounts named `ak-outpost-<uuid>`
(authentik/outposts/models.py, user_identifier); everything under `ak-` is kept for Authentik.
Besides: the usual administrative and system accounts, Redis' built-in `default` user, and the
names of the platform's own services.

E-mail: RFC 5321 limits (local part <= 64, domain <= 255, the whole path <= 254 octets), and a
deliberately strict character set (letters, digits and `.`, `_`, `%`, `+`, `-` before the @; DNS
labels after it) so an address can go into YAML, SQL and shell arguments without surprise.
"""

from __future__ import annotations

import re

RESERVED = frozenset({
    # Authentik
    "akadmin", "anonymoususer", "authentik", "goauthentik", "outpost",
    # administrative and system accounts
    "admin", "administrator", "root", "superuser", "sysadmin", "system", "sys", "daemon", "bin", "nobody",
    "operator", "operators", "staff", "support", "security", "hostmaster", "postmaster", "webmaster",
    "www", "www-data", "mail", "guest", "default", "user", "users", "test", "api", "auth", "sso", "login",
    # the platform's own services
    "postgres", "postgresql", "redis", "qdrant", "minio", "garage", "traefik", "ollama", "grafana",
    "prometheus", "portainer", "gitea", "aicommons",
    # key prefixes and queue names the shared services write in the shared Redis (tenant keys are
    # under `t:<user>:` and cannot meet them; the names are refused anyway, so no log or listing
    # ever shows a user `bull` beside BullMQ's `bull:*`)
    "langfuse", "bull", "bullmq", "celery", "kombu", "unacked", "superset", "formbricks",
})
RESERVED_PREFIXES = ("ak-", "authentik-", "aicommons-", "pg-")

LOCAL_MAX, DOMAIN_MAX, ADDRESS_MAX = 64, 255, 254
_LOCAL = re.compile(r"^[A-Za-z0-9_%+-]+(\.[A-Za-z0-9_%+-]+)*$")
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def name_problem(name: str) -> str | None:
    """Why a user name is reserved, or None."""
    low = name.lower()
    if low in RESERVED:
        return f"{name!r} is a reserved name (an account the platform or Authentik already owns)"
    for p in RESERVED_PREFIXES:
        if low.startswith(p):
            return f"{name!r} starts with {p!r}, which is reserved for the platform's own accounts"
    return None


def email_problem(email: str) -> str | None:
    """Why an e-mail address is refused, or None."""
    if len(email.encode()) > ADDRESS_MAX:
        return f"the address is {len(email.encode())} characters long; at most {ADDRESS_MAX} are allowed (RFC 5321)"
    if email.count("@") != 1:
        return "an address has exactly one '@'"
    local, domain = email.split("@")
    if not local or len(local) > LOCAL_MAX:
        return f"the part before '@' must be 1 to {LOCAL_MAX} characters (RFC 5321)"
    if not _LOCAL.match(local):
        return ("the part before '@' may hold only letters, digits and . _ % + - "
                "(no leading, trailing or double dot)")
    if len(domain) > DOMAIN_MAX:
        return f"the domain is longer than {DOMAIN_MAX} characters"
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or not labels[-1].isalpha():
        return "the domain must be DNS labels (letters, digits, inner '-') with a top-level domain, e.g. example.org"
    return None


def email_key(email: str) -> str:
    """Addresses are compared case-insensitively (Open WebUI and Authentik match people by e-mail)."""
    return email.lower()
