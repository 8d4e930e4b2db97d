"""What the site's driver really deploys, and what each app falls back to where it does not (pure).

The LXC driver installs only from Debian's mirror and from layers it builds out of registry
packages (llama-server): a shared service whose recipe downloads an
upstream binary or image is created as a container but not run ("not deployed here"). Its
apps then get their own fallback (Open WebUI's local vector store, local files, no tracing),
never an address where nothing listens; an `external:` server is always used as given.
The native runtime runs apps from published packages: apps without one are not available.
"""

from __future__ import annotations

from aicommons.catalog import Catalog
from aicommons.catalog.model import App, Service
from aicommons.plan.model import Endpoint, Route
from aicommons.spec.models import Site

NO_SIGN_IN = "no sign-in provider runs here and it has no login of its own"

# What an app does without a back end (need -> the app's own fallback). Missing pairs: the app
# simply has no such integration then (e.g. jupyter without Ollama).
FALLBACK: dict[tuple[str, str], str] = {
    ("openwebui", "qdrant"): "its own local vector store (Chroma in its data dir)",
    ("openwebui", "object_storage"): "local files in its data dir",
    ("openwebui", "ollama"): "no Ollama connection (a model server can be added in its settings)",
    ("openwebui", "searxng"): "web search off",
    ("openwebui", "langfuse"): "no tracing",
    ("flowise", "object_storage"): "local files in its data dir",
    ("flowise", "ollama"): "no Ollama default (chat-model nodes take any URL)",
    ("n8n", "ollama"): "no Ollama default (its nodes take any URL)",
    ("jupyter", "ollama"): "no OLLAMA_HOST",
    ("chainforge", "ollama"): "no default model server",
    ("big-agi", "ollama"): "no Ollama connection",
    ("kotaemon", "ollama"): "no Ollama connection",
}


# Redis keys an app version writes without its REDIS_KEY_PREFIX, found by running it against a
# per-user ACL (`~<user>:* &<user>:*`) and reading `ACL LOG`. A per-user ACL cannot admit such a key
# without sharing it between users (one tenant could rewrite what another's instance reads), so
# that version gets no Redis: one process per user needs none (tasks, config cache and token
# revocation then live in the process).
UNPREFIXED_REDIS_KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    # open_webui/utils/tools.py set_tool_servers/get_tool_servers: redis.set("tool_servers", ...)
    ("openwebui", "0.6.41"): ("tool_servers",),
}


def redis_refused(app: App) -> str | None:
    """Why this app version is not given Redis (None = it is)."""
    keys = UNPREFIXED_REDIS_KEYS.get((app.name, app.version))
    if not keys:
        return None
    return (f"not used: {app.title} {app.version} writes the unprefixed key(s) {', '.join(keys)}, which a "
            "per-user ACL cannot admit without sharing them between users; one process per user needs no Redis")


def lxc_unsupported(svc: Service) -> str | None:
    """Why the LXC driver cannot install this service (None = it can)."""
    inst = svc.install
    if (inst.method == "apt" and not inst.needs_download) or inst.method == "aicommons":
        return None  # aicommons: the runtime layer built from this checkout (drivers/runtime.py)
    if inst.method == "layer":  # built on the host from registry packages (drivers/modellayers.py)
        return None
    if inst.method == "none":
        return "the catalog has no install recipe for it"
    what = f"image {inst.image}" if inst.image else "an upstream release"
    return (f"its {inst.method} recipe downloads {what} from outside Debian's mirror, and this "
            "driver installs only from the mirror; the Proxmox driver runs this recipe")


def undeployed(site: Site, catalog: Catalog) -> dict[str, str]:
    """Enabled shared services the site's driver does not run, with the reason. `external:`
    servers are the operator's and always count as deployed."""
    if site.driver.kind != "lxc":
        return {}
    out = {}
    for name, ov in site.services.items():
        if not ov.enabled or ov.external is not None or name not in catalog.services:
            continue
        reason = lxc_unsupported(catalog.services[name])
        if reason:
            out[name] = reason
    return out


def native_unavailable(app: App) -> str | None:
    """Why this app cannot run natively (None = it can)."""
    if app.native is None:
        return "the catalog names no published package for it"
    if app.native.source == "none":
        return app.native.unavailable or "no published package exists"
    return None


def unavailable_apps(site: Site, apps: list[str], catalog: Catalog) -> dict[str, str]:
    """Apps of the user template the site's runtime cannot run, with the reason."""
    if site.user_template.runtime != "native":
        return {}
    return {a: r for a in apps if a in catalog.apps and (r := native_unavailable(catalog.apps[a]))}


def need_service(site: Site, need: str) -> str:
    return site.object_storage if need == "object_storage" else need


def fallbacks(site: Site, apps: list[str], catalog: Catalog, gone: dict[str, str],
              via_gateway: bool = False) -> dict[str, dict[str, str]]:
    """app -> {service: fallback} for each need the site does not deploy (or does not enable).
    Where the model gateway runs (`via_gateway`), every app reaches the site's models through it,
    whichever server has them: the need for Ollama is met."""
    out: dict[str, dict[str, str]] = {}
    for a in apps:
        app = catalog.apps.get(a)
        if app and "redis" in app.needs and (why := redis_refused(app)):
            out.setdefault(a, {})["redis"] = why
        for need in app.needs if app else ():
            if need == "ollama" and via_gateway:
                continue
            svc = need_service(site, need)
            ov = site.services.get(svc)
            missing = ov is None or not ov.enabled or svc in gone
            if missing and (a, need) in FALLBACK:
                out.setdefault(a, {})[svc] = FALLBACK[(a, need)]
    return out


def sign_in_provider(site: Site, endpoints: dict[str, Endpoint], gone: dict[str, str]) -> str | None:
    """The sign-in provider that really runs on the site (`identity.provider`, when enabled and
    deployed by the driver), or None. It becomes `ResolvedSite.sign_in`; forward-auth, the identity
    headers and every trust in them follow from it (plan/identity.py sign_in). A provider that is
    enabled but not deployed signs nobody in: routes must not point at it."""
    p = site.identity.provider
    return p if p is not None and p in endpoints and p not in gone else None


def published_routes(routes: list[Route], gone: dict[str, str], unavailable: dict[str, str],
                     sign_in: str | None) -> tuple[list[Route], dict[str, str]]:
    """(routes Traefik gets, withheld: service or user/app -> why). No router, middleware or
    certificate name for what nothing would answer (502) or nothing would sign people in to."""
    keep: list[Route] = []
    withheld: dict[str, str] = {}
    for r in routes:
        key = f"{r.owner}/{r.service}" if r.owner else r.service
        if r.owner is None and r.service in gone:
            withheld[key] = f"not deployed here ({gone[r.service]})"
        elif r.owner is not None and r.service in unavailable:
            withheld[r.service] = f"not available in the native runtime ({unavailable[r.service]})"
        elif r.access in ("owner", "site-users") and sign_in is None and not r.own_login:
            withheld[r.service] = NO_SIGN_IN
        else:
            keep.append(r)
    return keep, withheld
