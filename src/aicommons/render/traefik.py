"""Traefik: the static configuration and one dynamic file per container (the reference architecture's 205<octet>.yml).

Shared middlewares (security headers, site-wide SSO, operator allow-list), the outpost service,
the API router and the certificate holders live in the proxy's own file; every other file holds
only its own routers, services and, for a user, the forward-auth middleware of that user. So
adding a user touches the user's file and, when the user joins a certificate, the proxy's file.

A route's middlewares follow from its access class alone (catalog data, docs/security.md):
public -> headers; site-users -> forward-auth (any site user); owner -> forward-auth (the provider
admits only the owner); operator -> allow-list of the operator sources. Where forward-auth goes and
which headers it passes on follow from the site's identity provider (plan/identity.py); with
Authentik every host behind forward-auth also gets a higher-priority router sending
/outpost.goauthentik.io/ to the outpost.
"""

from __future__ import annotations

from aicommons.plan.identity import SignIn, sign_in
from aicommons.plan.model import ResolvedSite, Route
from aicommons.render.common import dump_yaml

RESOLVER = "letsencrypt"
HEADERS = "secure-headers"
SSO = "authentik-sso"  # the name predates LL::NG; kept so running sites keep their middleware names
OPERATOR = "operator-allow"
OUTPOST_SERVICE = "authentik-outpost"
# Authentik's outpost serves /outpost.goauthentik.io/{start,callback,sign_out} on the *app's* host
# (application.go: mux.HandleFunc("/outpost.goauthentik.io/start" ...); the OAuth redirect URI is
# external_host + /outpost.goauthentik.io/callback). Authentik's own Traefik guide
# (website/docs/.../_traefik_standalone.md) routes that prefix to the outpost with a higher priority.
# LemonLDAP::NG needs no such route: its handler redirects to the portal's own host.
# Explicit priorities (Traefik v3 routers: the default priority is the rule's length, higher wins;
# doc.traefik.io routing/routers "priority"): the outpost's paths first, then an app's public
# paths, then the app; certificate holders never win.
PRIORITY_OUTPOST, PRIORITY_PUBLIC, PRIORITY_APP, PRIORITY_CERT = 300, 200, 100, 1
HEALTH_INTERVAL = "10s"
HEALTH_TIMEOUT = "10s"
HEADER = "# Rendered by aicommons: do not edit by hand (`aicommons render` rewrites it).\n"


def router_name(route: Route) -> str:
    """The host's first label (`ai-user1`, `ollama`): unique because hosts are checked unique."""
    return route.host.split(".", 1)[0]


def auth_middleware(owner: str) -> str:
    return f"authentik-{owner}"


def forward_auth_address(resolved: ResolvedSite) -> str | None:
    s = sign_in(resolved)
    return s.forward_auth if s else None


def _forward_auth(s: SignIn) -> dict:
    # trustForwardHeader false: Traefik sends the provider its own X-Forwarded-Host/Proto/Uri
    # (what Authentik's getTraefikForwardUrl and LL::NG's Handler::Server::Traefik read), never
    # ones a client made up.
    return {"forwardAuth": {"address": s.forward_auth, "trustForwardHeader": False,
                            "authResponseHeaders": list(s.response_headers)}}


def _outpost_prefix(resolved: ResolvedSite) -> str | None:
    s = sign_in(resolved)
    return s.outpost_prefix if s else None


def needs_sign_in(route: Route) -> bool:
    return route.access in ("owner", "site-users")


def routable(resolved: ResolvedSite, route: Route) -> bool:
    """A route that needs sign-in is published without Authentik only if the software has its own login."""
    if needs_sign_in(route) and forward_auth_address(resolved) is None:
        return route.own_login
    return True


def guarded(resolved: ResolvedSite, route: Route) -> bool:
    """Does the route carry forward-auth (and so need the outpost's paths on its host)?"""
    return needs_sign_in(route) and forward_auth_address(resolved) is not None


def middlewares(resolved: ResolvedSite, route: Route) -> list[str]:
    """The route's middlewares, from its access class alone."""
    chain = [HEADERS]
    if guarded(resolved, route):
        chain.append(auth_middleware(route.owner) if route.access == "owner" and route.owner else SSO)
    elif route.access == "operator":
        chain.append(OPERATOR)
    return chain


def _http_router(resolved: ResolvedSite, route: Route) -> dict:
    # `tls: {}` without a resolver: certificates are asked for by the certificate holders in the
    # proxy's file (one per SAN certificate), never one per router. A router's tls section replaces
    # the entry point's entirely (doc.traefik.io v3 routing-configuration/http/tls/overview), and
    # the ACME provider only watches routers naming its resolver (pkg/provider/acme/provider.go).
    return {"rule": f"Host(`{route.host}`)", "service": router_name(route), "entryPoints": ["websecure"],
            "middlewares": middlewares(resolved, route), "priority": PRIORITY_APP, "tls": {}}


def checked_service(route: Route) -> str:
    """The service whose serverStatus says whether a person's app answers (Traefik's API)."""
    return f"{router_name(route)}-checked"


def _http_services(route: Route) -> dict[str, dict]:
    """The route's service(s), by name. A shared service with several servers is balanced, its
    health check taking a down one out. A person's app has one server: Traefik checks it so that
    its API (serverStatus) tells the portal, which may not reach the app itself, whether it
    answers, but the check never turns the person away. Traefik has no failure threshold (one
    missed check takes the server out until the next passes; a CI run under load gave the person
    "no available server" in Open WebUI), so the router's service is a failover whose fallback is
    the same server unchecked (pkg/server/service/service.go getFailoverServiceHandler; with no
    healthCheck of its own the fallback always serves)."""
    name = router_name(route)
    lb: dict = {"servers": [{"url": u} for u in route.urls], "passHostHeader": True}
    check = {"path": route.health_path or "/", "interval": HEALTH_INTERVAL, "timeout": HEALTH_TIMEOUT}
    if len(route.urls) > 1:
        return {name: {"loadBalancer": {**lb, "healthCheck": check}}}
    if route.owner is None:
        return {name: {"loadBalancer": lb}}
    checked, direct = checked_service(route), f"{name}-direct"
    return {name: {"failover": {"service": checked, "fallback": direct}},
            checked: {"loadBalancer": {**lb, "healthCheck": check}}, direct: {"loadBalancer": lb}}


def dynamic_file(resolved: ResolvedSite, routes: list[Route], owner: str | None = None) -> dict:
    """One dynamic file's content for the given routes (all from one container)."""
    http: dict = {"routers": {}, "services": {}}
    tcp: dict = {"routers": {}, "services": {}}
    for r in routes:
        if not routable(resolved, r):
            continue
        name = router_name(r)
        if r.kind == "tcp":
            tcp["routers"][name] = {"rule": f"HostSNI(`{r.host}`)", "service": name, "entryPoints": ["websecure"],
                                    "middlewares": [f"{OPERATOR}-tcp"], "tls": {}}
            tcp["services"][name] = {"loadBalancer": {"servers": [{"address": u.split("://", 1)[1]}
                                                                  for u in r.urls]}}
            continue
        http["routers"][name] = _http_router(resolved, r)
        http["services"].update(_http_services(r))
        if guarded(resolved, r) and (prefix := _outpost_prefix(resolved)):
            http["routers"][f"{name}-outpost"] = {
                **_http_router(resolved, r), "rule": f"Host(`{r.host}`) && PathPrefix(`{prefix}`)",
                "service": OUTPOST_SERVICE, "middlewares": [HEADERS], "priority": PRIORITY_OUTPOST}
        if r.public_paths and guarded(resolved, r):
            rule = " || ".join(f"PathPrefix(`{p}`)" for p in r.public_paths)
            http["routers"][f"{name}-public"] = {**_http_router(resolved, r), "rule": f"Host(`{r.host}`) && ({rule})",
                                                 "middlewares": [HEADERS], "priority": PRIORITY_PUBLIC}
    sso = sign_in(resolved)
    if owner and sso and any(r.access == "owner" and routable(resolved, r) for r in routes):
        http["middlewares"] = {auth_middleware(owner): _forward_auth(sso)}
    out: dict = {}
    if http["routers"]:
        out["http"] = http
    if tcp["routers"]:
        out["tcp"] = tcp
    return out


def certificate_routers(resolved: ResolvedSite) -> dict[str, dict]:
    """One router per certificate: it names the certificate's domains for the ACME resolver.

    Traefik's ACME provider asks for `tls.domains` (main + sans) of every router that names the
    resolver, and skips names a certificate it holds or is resolving already covers
    (pkg/provider/acme/provider.go: watchNewDomains, resolveCertificate, getUncheckedDomains; the
    file provider's syntax is `tls: {certResolver, domains: [{main, sans}]}` on the router). Routers that
    serve traffic carry `tls: {}` (router TLS replaces the entry point's), so only these ask.
    The holder matches its main host at the lowest priority: the host's own router always wins.
    """
    out = {}
    for c in resolved.certificates:
        main, *sans = c.hosts
        domains = {"main": main, "sans": sans} if sans else {"main": main}
        rule_host = resolved.site.domain if c.wildcard else main
        out[c.name] = {"rule": f"Host(`{rule_host}`)", "service": "noop@internal", "entryPoints": ["websecure"],
                       "middlewares": [HEADERS, OPERATOR], "priority": PRIORITY_CERT,
                       "tls": {"certResolver": RESOLVER, "domains": [domains]}}
    return out


def proxy_file(resolved: ResolvedSite) -> dict:
    """The proxy's own file: shared middlewares and the operator-only API/dashboard router."""
    site = resolved.site
    allow = list(resolved.operator_sources)
    mws: dict = {
        HEADERS: {"headers": {
            "stsSeconds": 31536000, "stsIncludeSubdomains": True, "stsPreload": True,
            "forceSTSHeader": True, "contentTypeNosniff": True, "browserXssFilter": True,
            "frameDeny": False, "customFrameOptionsValue": "SAMEORIGIN",
            "referrerPolicy": "strict-origin-when-cross-origin",
            "customResponseHeaders": {"X-Powered-By": "", "Server": ""},
        }},
        OPERATOR: {"ipAllowList": {"sourceRange": allow}},
    }
    sso = sign_in(resolved)
    services: dict = {}
    if sso:
        mws[SSO] = _forward_auth(sso)
    if sso and sso.outpost_prefix:
        services[OUTPOST_SERVICE] = {"loadBalancer": {"servers": [{"url": sso.base_url}], "passHostHeader": True}}
    host = f"traefik.{site.domain}"
    routers = {"traefik-api": {
        "rule": f"Host(`{host}`)", "service": "api@internal", "entryPoints": ["websecure"],
        "middlewares": [HEADERS, OPERATOR], "priority": PRIORITY_APP, "tls": {}}}
    routers.update(certificate_routers(resolved))
    http: dict = {"routers": routers, "middlewares": mws}
    if services:
        http["services"] = services
    return {"http": http, "tcp": {"middlewares": {f"{OPERATOR}-tcp": {"ipAllowList": {"sourceRange": allow}}}}}


def static_config(resolved: ResolvedSite) -> dict:
    """traefik.yml: entry points, file provider with watch, ACME, internal API, ping."""
    t = resolved.site.network.traefik
    acme: dict = {"email": t.acme_email or resolved.site.operator_email or f"admin@{resolved.site.domain}",
                  "storage": "/etc/traefik/acme.json"}
    # No certResolver on the entry point: the certificate holders ask for every certificate.
    websecure: dict = {"address": ":443", "http": {"tls": {}}, "forwardedHeaders": {"trustedIPs": []}}
    if t.dns_provider:
        acme["dnsChallenge"] = {"provider": t.dns_provider}
    else:
        acme["httpChallenge"] = {"entryPoint": "web"}
    return {
        "entryPoints": {
            "web": {"address": ":80", "http": {"redirections": {"entryPoint": {
                "to": "websecure", "scheme": "https", "permanent": True}}}},
            "websecure": websecure,
            "ping": {"address": ":8082"},
        },
        # Throttle 1s (default 2s): a new user's route is served sooner; write_tree renames each
        # file once, so a burst of user files still lands in one or two reloads.
        "providers": {"providersThrottleDuration": "1s", "file": {"directory": t.dynamic_dir, "watch": True}},
        "certificatesResolvers": {RESOLVER: {"acme": acme}},
        # No `insecure`: the API is reached only through the operator-only `traefik-api` router.
        "api": {"dashboard": True},
        "ping": {"entryPoint": "ping"},
        "log": {"level": "INFO"},
        "accessLog": {},
    }


def routes_by_file(resolved: ResolvedSite) -> dict[str, list[Route]]:
    out: dict[str, list[Route]] = {}
    for r in resolved.routes:
        out.setdefault(r.traefik_file, []).append(r)
    return out


def render_dynamic(resolved: ResolvedSite, routes: list[Route], owner: str | None = None) -> str:
    return dump_yaml(dynamic_file(resolved, routes, owner), HEADER)


def render_static(resolved: ResolvedSite) -> str:
    return dump_yaml(static_config(resolved), HEADER)


def render_proxy(resolved: ResolvedSite) -> str:
    return dump_yaml(proxy_file(resolved), HEADER)
