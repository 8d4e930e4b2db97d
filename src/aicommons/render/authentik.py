"""Authentik blueprints: per user, the user, their group, one forward_single proxy provider and
application per routed app, and the policy binding that admits only that group (an application
with no binding admits every user). One site blueprint holds the SSO application for shared
routes and puts every provider on the embedded outpost.

Blueprints use Authentik's YAML tags (`!KeyOf`, `!Find`); `Tag` renders them.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from aicommons.plan.model import ResolvedSite, Route, Tenant
from aicommons.render.common import FastDumper, catalog, memo_dump
from aicommons.render.traefik import routable

AUTH_FLOW = "default-provider-authorization-implicit-consent"
INVALIDATION_FLOW = "default-provider-invalidation-flow"
OUTPOST = "authentik Embedded Outpost"
LABELS = {"blueprints.goauthentik.io/instantiate": "true"}


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


class TagLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
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


def user_blueprint(resolved: ResolvedSite, t: Tenant) -> dict:
    cat = catalog()
    entries: list[dict] = [
        {"model": "authentik_core.user", "state": "present", "id": "user", "identifiers": {"username": t.user},
         "attrs": {"name": t.user, "email": t.email or "", "is_active": True, "path": "aicommons"}},
        {"model": "authentik_core.group", "state": "present", "id": "group",
         "identifiers": {"name": group_name(t.user)}, "attrs": {"users": [Tag("!KeyOf", "user")]}},
    ]
    for r in resolved.routes:
        if r.owner != t.user or r.access != "owner" or not routable(resolved, r):
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
    """SSO applications for shared routes (any site user) and the outpost's provider list."""
    entries: list[dict] = []
    for r in resolved.routes:
        if r.owner is None and r.access == "sso":
            svc = catalog().services.get(r.service)
            pk, ak = f"provider-{r.service}", f"app-{r.service}"
            entries.append(_provider(r, pk))
            entries.append(_application(r, svc.title if svc else r.service, pk, ak))
    # Apply every user blueprint first, so the outpost's !Find sees their providers.
    entries += [{"model": "authentik_blueprints.metaapplyblueprint",
                 "attrs": {"identifiers": {"path": blueprint_path(t.user)}, "required": False}}
                for t in resolved.tenants]
    providers = [Tag("!Find", ["authentik_providers_proxy.proxyprovider", ["name", provider_name(r)]])
                 for r in resolved.routes if r.access in ("owner", "sso") and r.kind == "http"
                 and routable(resolved, r)]
    entries.append({"model": "authentik_outposts.outpost", "state": "present",
                    "identifiers": {"name": OUTPOST}, "attrs": {"providers": providers}})
    return {"version": 1, "metadata": {"name": "aicommons site", "labels": dict(LABELS)},
            "entries": entries}


def blueprint_path(user: str) -> str:
    """Path under Authentik's /blueprints (the compose file mounts ./blueprints at /blueprints/aicommons)."""
    return f"aicommons/user-{user}.yaml"


def dump(doc: dict) -> str:
    head = "# yaml-language-server: $schema=https://goauthentik.io/blueprints/schema.json\n"
    return head + memo_dump(doc, _Dumper, sort_keys=False, default_flow_style=False, width=120)
