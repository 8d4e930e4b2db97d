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
from aicommons.spec.models import Site

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
    if inst.method == "apt" and not inst.needs_download:
        return None
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


def fallbacks(site: Site, apps: list[str], catalog: Catalog, gone: dict[str, str]) -> dict[str, dict[str, str]]:
    """app -> {service: fallback} for each need the site does not deploy (or does not enable)."""
    out: dict[str, dict[str, str]] = {}
    for a in apps:
        app = catalog.apps.get(a)
        if app and "redis" in app.needs and (why := redis_refused(app)):
            out.setdefault(a, {})["redis"] = why
        for need in app.needs if app else ():
            svc = need_service(site, need)
            ov = site.services.get(svc)
            missing = ov is None or not ov.enabled or svc in gone
            if missing and (a, need) in FALLBACK:
                out.setdefault(a, {})[svc] = FALLBACK[(a, need)]
    return out
