"""Traefik: the static configuration and one dynamic file per container (the seed's 205<octet>.yml).

Shared middlewares (security headers, site-wide SSO, operator allow-list) and the API router
live in the proxy's own file; every other file holds only its own routers, services and, for a
user, the forward-auth middleware of that user. So adding or changing one user touches one file.
"""

from __future__ import annotations

from aicommons.plan.model import ResolvedSite, Route
from aicommons.render.common import catalog, dump_yaml

RESOLVER = "letsencrypt"
HEADERS = "secure-headers"
SSO = "authentik-sso"
OPERATOR = "operator-allow"
AUTH_HEADERS = ["X-authentik-username", "X-authentik-groups", "X-authentik-email", "X-authentik-name",
                "X-authentik-uid"]
HEALTH_INTERVAL = "10s"
# Paths that outside callers must reach without a login: n8n's production webhooks (n8n checks
# their own header/basic auth). Everything else of the app stays behind forward-auth.
UNAUTHENTICATED_PATHS = {"n8n": ("/webhook/",)}
HEADER = "# Rendered by aicommons: do not edit by hand (`aicommons render` rewrites it).\n"


def router_name(route: Route) -> str:
    """The host's first label (`ai-user1`, `ollama`): unique because hosts are checked unique."""
    return route.host.split(".", 1)[0]


def auth_middleware(owner: str) -> str:
    return f"authentik-{owner}"


def forward_auth_address(resolved: ResolvedSite) -> str | None:
    ep = resolved.endpoints.get("authentik")
    if ep is None:
        return None
    return f"http://{ep.host}:{ep.ports.get('http', 9000)}/outpost.goauthentik.io/auth/traefik"


def _forward_auth(address: str) -> dict:
    return {"forwardAuth": {"address": address, "trustForwardHeader": False,
                            "authResponseHeaders": list(AUTH_HEADERS)}}


def routable(resolved: ResolvedSite, route: Route) -> bool:
    """Apps without a login of their own are never routed unless forward-auth protects them."""
    if route.access in ("owner", "sso") and forward_auth_address(resolved) is None:
        app = catalog().apps.get(route.service)
        return bool(app and app.own_login) if route.owner else False
    return True


def _middlewares(resolved: ResolvedSite, route: Route) -> list[str]:
    chain = [HEADERS]
    has_auth = forward_auth_address(resolved) is not None
    if route.access == "owner" and has_auth and route.owner:
        chain.append(auth_middleware(route.owner))
    elif route.access == "sso" and has_auth:
        chain.append(SSO)
    elif route.access == "operator":
        chain.append(OPERATOR)
    return chain


def _http_router(resolved: ResolvedSite, route: Route) -> dict:
    return {"rule": f"Host(`{route.host}`)", "service": router_name(route), "entryPoints": ["websecure"],
            "middlewares": _middlewares(resolved, route), "tls": {"certResolver": RESOLVER}}


def _http_service(route: Route) -> dict:
    lb: dict = {"servers": [{"url": u} for u in route.urls], "passHostHeader": True}
    if len(route.urls) > 1:
        lb["healthCheck"] = {"path": route.health_path or "/", "interval": HEALTH_INTERVAL, "timeout": "3s"}
    return {"loadBalancer": lb}


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
                                    "tls": {"certResolver": RESOLVER}}
            if r.access == "operator":
                tcp["routers"][name]["middlewares"] = [f"{OPERATOR}-tcp"]
            tcp["services"][name] = {"loadBalancer": {"servers": [{"address": u.split("://", 1)[1]}
                                                                  for u in r.urls]}}
            continue
        http["routers"][name] = _http_router(resolved, r)
        http["services"][name] = _http_service(r)
        paths = UNAUTHENTICATED_PATHS.get(r.service, ()) if r.owner else ()
        if paths:
            rule = " || ".join(f"PathPrefix(`{p}`)" for p in paths)
            http["routers"][f"{name}-webhook"] = {**_http_router(resolved, r), "rule": f"Host(`{r.host}`) && ({rule})",
                                                  "middlewares": [HEADERS]}
    addr = forward_auth_address(resolved)
    if owner and addr and any(r.access == "owner" for r in routes):
        http["middlewares"] = {auth_middleware(owner): _forward_auth(addr)}
    out: dict = {}
    if http["routers"]:
        out["http"] = http
    if tcp["routers"]:
        out["tcp"] = tcp
    return out


def proxy_file(resolved: ResolvedSite) -> dict:
    """The proxy's own file: shared middlewares and the operator-only API/dashboard router."""
    site = resolved.site
    allow = list(site.network.traefik.operator_allow)
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
    addr = forward_auth_address(resolved)
    if addr:
        mws[SSO] = _forward_auth(addr)
    host = f"traefik.{site.domain}"
    return {
        "http": {
            "routers": {"traefik-api": {
                "rule": f"Host(`{host}`)", "service": "api@internal", "entryPoints": ["websecure"],
                "middlewares": [HEADERS, OPERATOR], "tls": {"certResolver": RESOLVER}}},
            "middlewares": mws,
        },
        "tcp": {"middlewares": {f"{OPERATOR}-tcp": {"ipAllowList": {"sourceRange": allow}}}},
    }


def static_config(resolved: ResolvedSite) -> dict:
    """traefik.yml: entry points, file provider with watch, ACME, internal API, ping."""
    t = resolved.site.network.traefik
    acme: dict = {"email": t.acme_email or resolved.site.operator_email or f"admin@{resolved.site.domain}",
                  "storage": "/etc/traefik/acme.json"}
    websecure: dict = {"address": ":443", "http": {"tls": {"certResolver": RESOLVER}},
                       "forwardedHeaders": {"trustedIPs": []}}
    if t.dns_provider:
        acme["dnsChallenge"] = {"provider": t.dns_provider}
        websecure["http"]["tls"]["domains"] = [{"main": resolved.site.domain, "sans": [f"*.{resolved.site.domain}"]}]
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
