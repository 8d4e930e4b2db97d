"""render_site / render_user: gather every renderer's files into {relative path: RenderedFile}.

Layout of the output tree (docs/render.md says where each part goes on a real site):
  traefik/traefik.yml, traefik/dynamic/<205xxx>.yml     Traefik static + one file per container
  users/<user>/docker-compose.yml, .env (0600)          each user's app bundle (runtime docker)
  users/<user>/native.json, units/*.service, env/ (0600)  or its native units (runtime native)
  services/<host>/...                                   each shared container's config + install.sh
  services/authentik/blueprints/*.yaml                  SSO: users, groups, providers, bindings
  firewall/<ctid>.fw, api.json                         Proxmox VE firewall
"""

from __future__ import annotations

import importlib
import json

from aicommons.plan.model import ResolvedSite, Tenant
from aicommons.plan.secrets import SecretLookup
from aicommons.render import authentik, authentik_flows, compose, firewall, native, traefik
from aicommons.render.envfile import render_env
from aicommons.render.files import SECRET_MODE, RenderedFile
from aicommons.render.services import backend_files
from aicommons.render.shared_compose import shared_files

AUTHENTIK_DIR = "services/authentik/blueprints"
USER_ROOT = "/opt/aicommons"  # where a user's bundle lands in its container (users/<user>/ -> <root>/<user>/)


def _lookup(secrets) -> SecretLookup:
    """Accept a plain callable or an object with .get(scope, key) (the state's SecretStore)."""
    return secrets if callable(secrets) else secrets.get


def _app_files(resolved: ResolvedSite, t: Tenant, secrets: SecretLookup) -> list[RenderedFile]:
    """The user's apps in the site's runtime: a compose bundle, or native units (one source of env)."""
    base = f"users/{t.user}"
    if resolved.site.user_template.runtime == "native":
        b = native.native_bundle(resolved, t, secrets, f"{USER_ROOT}/{t.user}/env")
        return ([RenderedFile(f"{base}/{native.MANIFEST}", b.manifest(t.user))]
                + [RenderedFile(f"{base}/units/{u}", text) for u, text in b.units.items()]
                + [RenderedFile(f"{base}/env/{a}.env", text, SECRET_MODE) for a, text in b.env_files.items()]
                + [RenderedFile(f"{base}/accounts/{a}.json", text, SECRET_MODE) for a, text in b.accounts.items()])
    text, env = compose.render_compose(resolved, t, secrets)
    out = [RenderedFile(f"{base}/docker-compose.yml", text),
           RenderedFile(f"{base}/.env", render_env(env, f"Secrets of {t.user}'s apps. Mode 0600; never commit."),
                        SECRET_MODE)]
    if "chainforge" in t.apps:
        out.append(RenderedFile(f"{base}/chainforge/Dockerfile", compose.chainforge_dockerfile()))
    return out


def _user_files(resolved: ResolvedSite, t: Tenant, secrets: SecretLookup, routes, fw) -> list[RenderedFile]:
    out = _app_files(resolved, t, secrets)
    c = resolved.container(t.ctid)
    if routes:
        out.append(RenderedFile(f"traefik/dynamic/{c.traefik_file}", traefik.render_dynamic(resolved, routes, t.user)))
    if "authentik" in resolved.endpoints:
        out.append(RenderedFile(f"{AUTHENTIK_DIR}/user-{t.user}.yaml",
                                authentik.dump(authentik.user_blueprint(resolved, t))))
    out.append(RenderedFile(f"firewall/{t.ctid}.fw", fw.container_fw(t.ctid)))
    return out


def render_user(resolved: ResolvedSite, user: str, secrets) -> dict[str, RenderedFile]:
    """The files of one user: Traefik file, compose bundle, .env, blueprint, firewall (pure)."""
    t = resolved.tenant(user)
    routes = [r for r in resolved.routes if r.owner == user]
    fw = firewall.firewall_plan(resolved)
    return {f.path: f for f in _user_files(resolved, t, _lookup(secrets), routes, fw)}


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def render_site(resolved: ResolvedSite, secrets) -> dict[str, RenderedFile]:
    """Every file of the site (pure)."""
    secrets = _lookup(secrets)
    out: list[RenderedFile] = [
        RenderedFile("traefik/traefik.yml", traefik.render_static(resolved)),
        RenderedFile(f"traefik/dynamic/{resolved.proxy_file}", traefik.render_proxy(resolved)),
    ]
    by_file = traefik.routes_by_file(resolved)
    fw = firewall.firewall_plan(resolved)
    for c in resolved.containers:
        if c.role == "shared":
            if c.traefik_file in by_file:
                out.append(RenderedFile(f"traefik/dynamic/{c.traefik_file}",
                                        traefik.render_dynamic(resolved, by_file.pop(c.traefik_file))))
            out.append(RenderedFile(f"firewall/{c.ctid}.fw", fw.container_fw(c.ctid)))
    for t in resolved.tenants:
        out += _user_files(resolved, t, secrets, by_file.get(resolved.container(t.ctid).traefik_file, []), fw)
    out += backend_files(resolved, secrets)
    out += shared_files(resolved, secrets)
    if "authentik" in resolved.endpoints:
        out.append(RenderedFile(f"{AUTHENTIK_DIR}/site.yaml", authentik.dump(authentik.site_blueprint(resolved))))
        out.append(RenderedFile(f"{AUTHENTIK_DIR}/flows.yaml", authentik.dump(authentik_flows.flows_blueprint(resolved))))
    out.append(RenderedFile("firewall/api.json", json.dumps(
        [{"method": m, "path": p, "body": b} for m, p, b in fw.api_calls()], indent=1) + "\n"))
    files = {f.path: f for f in out}
    mon = _optional("aicommons.render.monitoring")
    if mon is not None and hasattr(mon, "render_monitoring"):
        files.update(mon.render_monitoring(resolved))
    smap = _optional("aicommons.render.service_map")
    if smap is not None and hasattr(smap, "render"):
        files["SERVICE_IP_MAP.md"] = RenderedFile("SERVICE_IP_MAP.md", smap.render(resolved))
    return files
