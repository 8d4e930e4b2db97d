"""Authentik blueprints: per user, the user, their group, one forward_single proxy provider and
application per routed app, and the policy binding that admits only that group (an application
with no binding admits every user). One site blueprint holds the site-users group, an application
per `site-users` route bound to that group, and the embedded outpost with every provider and its
whole config.

Facts from Authentik's source (goauthentik/authentik):
- Blueprint identifiers are AND-ed into one query (blueprints/v1/importer.py,
  __query_from_identifier); an entry with `state: present` updates the object found, else creates
  it. A site user is identified by username *and* path `aicommons/users`, so a blueprint never
  finds (and never updates) a user it did not create, such as `akadmin` (blueprints/system/
  bootstrap.yaml) or an outpost's service account (`ak-outpost-<uuid>`, path
  `goauthentik.io/outposts`, outposts/models.py): creating one with a taken username fails.
- The outpost's `config` is one JSON field (api/outposts.py: `config = JSONDictField(source=
  "_config")`, validated as outposts/models.py OutpostConfig), so a blueprint replaces all of it:
  every key is rendered. The embedded outpost uses `authentik_host` for the browser-facing
  authorize URL (internal/outpost/proxyv2/application/endpoint.go, GetOIDCEndpoint), so it is
  the public `https://auth.<domain>`; left empty, redirects go to whatever host Authentik saw first.

Blueprints use Authentik's YAML tags (`!KeyOf`, `!Find`); `Tag` renders them.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from aicommons.plan.model import ResolvedSite, Route, Tenant
from aicommons.render.authentik_flows import USER_PATH  # site users live here, apart from Authentik's own
from aicommons.render.common import FastDumper, catalog, memo_dump
from aicommons.render.traefik import guarded, routable

AUTH_FLOW = "default-provider-authorization-implicit-consent"
INVALIDATION_FLOW = "default-provider-invalidation-flow"
OUTPOST = "authentik Embedded Outpost"
LABELS = {"blueprints.goauthentik.io/instantiate": "true"}
SITE_GROUP = "aicommons-users"  # every site user: the group `site-users` applications admit


def outpost_config(resolved: ResolvedSite) -> dict:
    """The embedded outpost's whole config (keys and defaults of OutpostConfig and
    website/docs/add-secure-apps/outposts/_config.md); only authentik_host is ours."""
    return {
        "authentik_host": f"https://{_auth_host(resolved)}/",
        "authentik_host_insecure": False,
        "authentik_host_browser": "",
        "log_level": "info",
        "refresh_interval": "minutes=5",
        "object_naming_template": "ak-outpost-%(name)s",
        "container_image": None,
        "session_backend": "",  # embedded outposts keep sessions in Authentik's PostgreSQL regardless
        "kubernetes_postgresql_secret_name": "",
        "kubernetes_postgresql_credentials_secret_name": "",
        "docker_network": None,
        "docker_map_ports": True,
        "docker_labels": None,
        "kubernetes_replicas": 1,
        "kubernetes_namespace": "authentik",
        "kubernetes_ingress_annotations": {},
        "kubernetes_ingress_secret_name": "authentik-outpost-tls",
        "kubernetes_ingress_class_name": None,
        "kubernetes_service_type": "ClusterIP",
        "kubernetes_disabled_components": [],
        "kubernetes_image_pull_secrets": [],
        "kubernetes_json_patches": None,
    }


def _auth_host(resolved: ResolvedSite) -> str:
    for r in resolved.routes:
        if r.service == "authentik" and r.owner is None:
            return r.host
    return f"auth.{resolved.site.domain}"


@dataclass(frozen=True)
class Tag:
    """An Authentik YAML tag such as `!KeyOf app` or `!Find [model, [field, value]]`."""

    tag: str
    value: object


class _Dumper(FastDumper):
    pass


def _tag(dumper: yaml.SafeDumper, data: Tag):
    if isinstance(data.value, (list, tuple)):
        return dumper.represent_sequence(data.tag, list(data.value), flow_style=True)
    return dumper.represent_scalar(data.tag, str(data.value))


_Dumper.add_representer(Tag, _tag)


class TagLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]  # libyaml if built
    """Loads blueprints back (tags kept as plain values) for the parse check before writing."""


TagLoader.add_multi_constructor("!", lambda loader, suffix, node: (
    loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode)
    else loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode)
    else loader.construct_scalar(node)))


def _find_flow(slug: str) -> Tag:
    return Tag("!Find", ["authentik_flows.flow", ["slug", slug]])


def provider_name(route: Route) -> str:
    return f"aicommons-{route.host.split('.', 1)[0]}"


def group_name(user: str) -> str:
    return f"aicommons-{user}"


def _provider(route: Route, key: str) -> dict:
    return {"model": "authentik_providers_proxy.proxyprovider", "state": "present", "id": key,
            "identifiers": {"name": provider_name(route)},
            "attrs": {"mode": "forward_single", "external_host": f"https://{route.host}",
                      "authorization_flow": _find_flow(AUTH_FLOW), "invalidation_flow": _find_flow(INVALIDATION_FLOW),
                      "access_token_validity": "hours=24"}}


def _application(route: Route, title: str, provider_key: str, key: str) -> dict:
    slug = route.host.split(".", 1)[0]
    return {"model": "authentik_core.application", "state": "present", "id": key,
            "identifiers": {"slug": slug},
            "attrs": {"name": title, "provider": Tag("!KeyOf", provider_key),
                      "meta_launch_url": f"https://{route.host}", "policy_engine_mode": "any"}}


def _find_group(name: str) -> Tag:
    return Tag("!Find", ["authentik_core.group", ["name", name]])


def user_blueprint(resolved: ResolvedSite, t: Tenant) -> dict:
    cat = catalog()
    entries: list[dict] = [
        {"model": "authentik_core.group", "state": "present", "id": "group",
         "identifiers": {"name": group_name(t.user)}, "attrs": {"is_superuser": False}},
        # Identified by username and path: never matches a user someone else made (see above).
        # No `is_active`: a new user is active (core/models.py), and `users suspend` deactivates
        # one through the API (tenancy/authentik.py) without the next blueprint run undoing it.
        {"model": "authentik_core.user", "state": "present", "id": "user",
         "identifiers": {"username": t.user, "path": USER_PATH},
         "attrs": {"name": t.user, "email": t.email or "", "type": "internal",
                   "groups": [Tag("!KeyOf", "group"), _find_group(SITE_GROUP)]}},
    ]
    for r in resolved.routes:
        if r.owner != t.user or r.access != "owner" or not guarded(resolved, r):
            continue
        app = cat.apps.get(r.service)
        title = f"{app.title if app else r.service} ({t.user})"
        pk, ak = f"provider-{r.service}", f"app-{r.service}"
        entries.append(_provider(r, pk))
        entries.append(_application(r, title, pk, ak))
        entries.append({"model": "authentik_policies.policybinding", "state": "present",
                        "identifiers": {"target": Tag("!KeyOf", ak), "order": 0},
                        "attrs": {"group": Tag("!KeyOf", "group"), "enabled": True, "negate": False,
                                  "timeout": 30}})
    return {"version": 1, "metadata": {"name": f"aicommons user {t.user}", "labels": dict(LABELS)},
            "entries": entries}


def site_blueprint(resolved: ResolvedSite) -> dict:
    """The site-users group, its applications (shared `site-users` routes) and the outpost."""
    entries: list[dict] = [{"model": "authentik_core.group", "state": "present", "id": "site-users",
                            "identifiers": {"name": SITE_GROUP}, "attrs": {"is_superuser": False}}]
    for r in resolved.routes:
        if r.owner is None and r.access == "site-users" and routable(resolved, r):
            svc = catalog().services.get(r.service)
            pk, ak = f"provider-{r.service}", f"app-{r.service}"
            entries.append(_provider(r, pk))
            entries.append(_application(r, svc.title if svc else r.service, pk, ak))
            entries.append({"model": "authentik_policies.policybinding", "state": "present",
                            "identifiers": {"target": Tag("!KeyOf", ak), "order": 0},
                            "attrs": {"group": Tag("!KeyOf", "site-users"), "enabled": True, "negate": False,
                                      "timeout": 30}})
    # Apply every user blueprint first, so the outpost's !Find sees their providers.
    entries += [{"model": "authentik_blueprints.metaapplyblueprint",
                 "attrs": {"identifiers": {"path": blueprint_path(t.user)}, "required": False}}
                for t in resolved.tenants]
    providers = [Tag("!Find", ["authentik_providers_proxy.proxyprovider", ["name", provider_name(r)]])
                 for r in resolved.routes if guarded(resolved, r) and r.kind == "http"]
    entries.append({"model": "authentik_outposts.outpost", "state": "present",
                    "identifiers": {"managed": "goauthentik.io/outposts/embedded"},
                    "attrs": {"name": OUTPOST, "type": "proxy", "providers": providers,
                              "config": outpost_config(resolved)}})
    return {"version": 1, "metadata": {"name": "aicommons site", "labels": dict(LABELS)},
            "entries": entries}


def blueprint_path(user: str) -> str:
    """Path under Authentik's /blueprints (the compose file mounts ./blueprints at /blueprints/aicommons)."""
    return f"aicommons/user-{user}.yaml"


def dump(doc: dict) -> str:
    head = "# yaml-language-server: $schema=https://goauthentik.io/blueprints/schema.json\n"
    return head + memo_dump(doc, _Dumper, sort_keys=False, default_flow_style=False, width=120)
