"""Sign-in: which identity provider the site uses, and everything that follows from it (pure).

`identity.provider` in site.yaml names the provider (spec/models.py: lemonldap on the lxc driver,
authentik on proxmox). From that one choice follow: the address Traefik's forwardAuth asks, the
headers Traefik copies from the provider's answer onto the request, and (Authentik only) the
outpost paths every protected host must route to the provider. Render, the portal and the
per-user apps read them from here, never by naming a provider themselves.

The identity headers are the same for both providers, so apps and the portal have one trust path:
Authentik sets `X-authentik-*` (internal/outpost/proxyv2/application/mode_common.go, addHeaders);
the rendered LemonLDAP::NG configuration exports the three headers the site trusts under those
names (render/lemonldap.py, exportedHeaders).
"""

from __future__ import annotations

from dataclasses import dataclass

from aicommons.plan.model import ResolvedSite

USER_HEADER, EMAIL_HEADER, GROUPS_HEADER = "X-authentik-username", "X-authentik-email", "X-authentik-groups"
GROUP_SEPARATOR = "|"  # Authentik joins groups with '|' (mode_common.go); LL::NG's export does the same
OPERATORS_GROUP = "aicommons-operators"
# Every header the Authentik proxy provider sets on an admitted request (mode_common.go, addHeaders).
# Traefik deletes each listed header from the client's request before copying the provider's value,
# so a client cannot forge one.
AUTHENTIK_HEADERS = (USER_HEADER, GROUPS_HEADER, "X-authentik-entitlements", EMAIL_HEADER,
                     "X-authentik-name", "X-authentik-uid", "X-authentik-jwt", "X-authentik-meta-jwks",
                     "X-authentik-meta-outpost", "X-authentik-meta-provider", "X-authentik-meta-app",
                     "X-authentik-meta-version")
LEMONLDAP_HEADERS = (USER_HEADER, EMAIL_HEADER, GROUPS_HEADER)
# The LL::NG container's nginx: the portal on `/`, the Traefik handler on this one location.
LEMONLDAP_HTTP_PORT = 80
LEMONLDAP_AUTH_PATH = "/traefik-auth"
AUTHENTIK_AUTH_PATH = "/outpost.goauthentik.io/auth/traefik"
AUTH_PREFIX = "auth"  # the provider's own host: auth.<domain> (its catalog route prefix)


@dataclass(frozen=True)
class SignIn:
    """The site's working sign-in: who, where Traefik asks, which headers it passes on."""

    provider: str  # lemonldap | authentik (also its catalog service name)
    base_url: str  # the provider's HTTP server inside the site
    forward_auth: str  # Traefik forwardAuth `address`
    response_headers: tuple[str, ...]  # Traefik forwardAuth `authResponseHeaders`
    portal_host: str  # where people sign in (auth.<domain>)
    outpost_prefix: str | None = None  # Authentik: served on every protected host by the outpost


def provider(resolved: ResolvedSite) -> str:
    """The provider the site names (whether or not it runs: see sign_in)."""
    p = resolved.site.identity.provider
    assert p is not None, "Site fills in the driver's default provider (spec/models.py)"
    return p


def sign_in(resolved: ResolvedSite) -> SignIn | None:
    """The site's sign-in, or None when no provider runs (`resolved.sign_in`, decided once by
    plan/deployed.py sign_in_provider: the provider is not enabled or not deployed by the driver;
    then nothing that needs sign-in is published: forward-auth to nothing answers 500)."""
    name = resolved.sign_in
    if name is None:
        return None
    ep = resolved.endpoints[name]
    portal_host = f"{AUTH_PREFIX}.{resolved.site.domain}"
    if name == "authentik":
        base = f"http://{ep.host}:{ep.ports.get('http', 9000)}"
        return SignIn(name, base, base + AUTHENTIK_AUTH_PATH, AUTHENTIK_HEADERS, portal_host,
                      outpost_prefix="/outpost.goauthentik.io/")
    base = f"http://{ep.host}:{ep.ports.get('http', LEMONLDAP_HTTP_PORT)}"
    return SignIn(name, base, base + LEMONLDAP_AUTH_PATH, LEMONLDAP_HEADERS, portal_host)


def sign_out_url(s: SignIn | None) -> str | None:
    """Where a signed-in person ends their session at the provider: LL::NG's portal takes
    `?logout=1` (Portal/Main/Run.pm); Authentik's outpost serves `sign_out` on every host it guards
    (internal/outpost/proxyv2/application/application.go)."""
    if s is None:
        return None
    if s.outpost_prefix:
        return f"{s.outpost_prefix}sign_out"
    return f"https://{s.portal_host}/?logout=1"
