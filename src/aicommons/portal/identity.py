"""Who is asking: the identity provider's forward-auth headers from a trusted proxy, or the operator token.

Traefik's forwardAuth copies the identity headers (plan/identity.py, the same for Authentik and
LemonLDAP::NG) from the provider's answer onto the request. Anyone
else can send the same headers, so they are believed only when the TCP peer is one of the
configured proxies (uvicorn runs with proxy_headers off: X-Forwarded-For cannot fake the peer).
A site without SSO signs the operator in with the local admin token instead; the browser then
holds a signed, expiring cookie, never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass

from aicommons.plan import identity as plan_identity
from aicommons.portal.config import PortalConfig

log = logging.getLogger("aicommons.portal")

# The names every provider sets (plan/identity.py), looked up case-insensitively.
USER_HEADER, EMAIL_HEADER, GROUPS_HEADER = (h.lower() for h in (plan_identity.USER_HEADER, plan_identity.EMAIL_HEADER,
                                                               plan_identity.GROUPS_HEADER))
COOKIE = "aicommons_operator"
SESSION_SECONDS = 8 * 3600


@dataclass(frozen=True)
class Identity:
    name: str
    email: str | None
    groups: tuple[str, ...]
    operator: bool
    via: str  # "sso" (forward-auth headers) or "token" (the local operator token)
    session: str = ""  # the token session's nonce (CSRF tokens are bound to it)


def _sign(key: str, text: str) -> str:
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def session_cookie(key: str, now: float | None = None) -> str:
    """`nonce.expiry.signature` for a freshly signed-in operator."""
    body = f"{secrets.token_urlsafe(12)}.{int((now or time.time()) + SESSION_SECONDS)}"
    return f"{body}.{_sign(key, 'session|' + body)}"


def _from_cookie(value: str, key: str) -> Identity | None:
    try:
        nonce, expiry, sig = value.split(".")
        live = int(expiry) > time.time()
    except ValueError:
        return None
    if not live or not hmac.compare_digest(sig, _sign(key, f"session|{nonce}.{expiry}")):
        return None
    return Identity("operator", None, (), True, "token", nonce)


def identify(peer: str | None, headers, cookies, cfg: PortalConfig, session_key: str) -> Identity | None:
    name = (headers.get(USER_HEADER) or "").strip()
    if name:
        if cfg.trusts(peer):
            groups = tuple(g for g in (headers.get(GROUPS_HEADER) or "").split(plan_identity.GROUP_SEPARATOR) if g)
            return Identity(name, (headers.get(EMAIL_HEADER) or "").strip() or None, groups,
                            cfg.operator_group in groups, "sso")
        log.warning("ignored forward-auth headers from %s: not a trusted proxy", peer)
    if cfg.admin_token and (value := cookies.get(COOKIE)):
        return _from_cookie(value, session_key)
    return None


def client_key(peer: str | None, headers, cfg: PortalConfig) -> str:
    """Whom a request comes from, for rate limits: behind the trusted proxy the address Traefik
    saw (the last X-Forwarded-For entry, which Traefik appends), else the TCP peer."""
    if cfg.trusts(peer):
        hops = [h.strip() for h in (headers.get("x-forwarded-for") or "").split(",") if h.strip()]
        if hops:
            return hops[-1]
    return peer or "?"


def over_https(scheme: str, peer: str | None, headers, cfg: PortalConfig) -> bool:
    """Served over HTTPS: directly, or by the trusted proxy that terminated TLS (X-Forwarded-Proto,
    believed from it alone)."""
    return scheme == "https" or (cfg.trusts(peer) and (headers.get("x-forwarded-proto") or "").strip() == "https")


class SigninLimiter:
    """Failed operator sign-ins: at most `per_client` per `window` seconds from one client and
    `overall` from everyone together; past either, sign-in answers 429 until the window moves."""

    def __init__(self, per_client: int = 5, overall: int = 50, window: float = 60.0):
        self.per_client, self.overall, self.window = per_client, overall, window
        self._fails: dict[str, list[float]] = {}
        self._mu = threading.Lock()

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until `key` may try again (0: now)."""
        now = time.time() if now is None else now
        with self._mu:
            for k in list(self._fails):
                self._fails[k] = [t for t in self._fails[k] if t > now - self.window]
                if not self._fails[k]:
                    del self._fails[k]
            mine = self._fails.get(key, [])
            every = sorted(t for ts in self._fails.values() for t in ts)
            waits = [mine[-self.per_client] + self.window - now] if len(mine) >= self.per_client else []
            if len(every) >= self.overall:
                waits.append(every[-self.overall] + self.window - now)
            return max(waits, default=0.0)

    def failed(self, key: str, now: float | None = None) -> None:
        with self._mu:
            self._fails.setdefault(key, []).append(time.time() if now is None else now)


def csrf_token(ident: Identity, key: str) -> str:
    """Bound to the person (and to the token session): a page of one cannot act for another."""
    return _sign(key, f"csrf|{ident.via}|{ident.name}|{ident.session}")


def csrf_ok(ident: Identity, key: str, sent: str | None) -> bool:
    if not sent:
        return False
    return hmac.compare_digest(sent, csrf_token(ident, key))
