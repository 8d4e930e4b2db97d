"""Every rendered Authentik blueprint, checked against Authentik's blueprint schema at the pinned
release (catalog/services/authentik.yaml, 2026.8.5). Nothing runs; no Authentik is simulated.

What the published schema is: `blueprints/schema.json`, written by Authentik's
authentik/blueprints/management/commands/make_blueprint_schema.py: an envelope (version,
metadata, context, entries) and per model an entry template (model, id, state, conditions,
permissions, attrs, identifiers) whose attrs/identifiers are the model's serializer in its
writable fields (`to_jsonschema`: read-only fields skipped, `required` emptied). The file of the
pinned release cannot be had here (the repository is over the size `fetch` brings; the stored
schema.json is of the pre-2024 layout), so the test rebuilds exactly those two parts from
what *is* published for the pinned release:
- the envelope and entry template, as make_blueprint_schema.py writes them (JSON Schema below);
- each model's writable serializer fields, from `authentik-client==2026.8.5` (PyPI): its
  `<Model>Request` classes are generated from the same serializers' request side (OpenAPI).
It is stricter than the published file, which allows unknown keys: a key the serializer does not
have is an error here (Authentik would silently ignore it). A `!KeyOf` must name an `id` defined
earlier in the same blueprint (the importer resolves them in order, blueprints/v1/common.py).
Values that are tags (`!KeyOf`, `!Find`) are primary keys Authentik resolves at import; only
their field is checked.
"""

from __future__ import annotations

import importlib

import jsonschema
import pydantic
import pytest
import yaml

from aicommons.render.site import AUTHENTIK_DIR, render_site
from tests.test_traefik_harness import FakeSecrets, make_site

pytest.importorskip("authentik_client")

# make_blueprint_schema.py Command.__init__ and template_entry; `state` values are
# BlueprintEntryDesiredState (blueprints/v1/common.py).
ENVELOPE = {
    "type": "object", "required": ["version", "entries"],
    "properties": {
        "version": {"type": "integer"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string"},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "context": {"type": "object"},
        "entries": {"type": "array", "items": {
            "type": "object", "required": ["model"],
            "properties": {"model": {"type": "string"}, "id": {"type": "string"},
                           "state": {"type": "string", "enum": ["absent", "created", "must_created", "present"]},
                           "conditions": {"type": "array"},
                           "permissions": {"type": "array"},
                           "attrs": {"type": "object"}, "identifiers": {"type": "object"}}}},
    },
}

# model path (app_label.model_name) -> the serializer's request class in authentik-client
REQUEST_MODEL = {
    "authentik_core.group": "GroupRequest",
    "authentik_core.user": "UserRequest",
    "authentik_core.application": "ApplicationRequest",
    "authentik_providers_proxy.proxyprovider": "ProxyProviderRequest",
    "authentik_policies.policybinding": "PolicyBindingRequest",
    "authentik_policies_expression.expressionpolicy": "ExpressionPolicyRequest",
    "authentik_outposts.outpost": "OutpostRequest",
    "authentik_flows.flow": "FlowRequest",
    "authentik_flows.flowstagebinding": "FlowStageBindingRequest",
    "authentik_stages_invitation.invitationstage": "InvitationStageRequest",
    "authentik_stages_prompt.prompt": "PromptRequest",
    "authentik_stages_prompt.promptstage": "PromptStageRequest",
    "authentik_stages_user_write.userwritestage": "UserWriteStageRequest",
    "authentik_stages_user_login.userloginstage": "UserLoginStageRequest",
    "authentik_stages_identification.identificationstage": "IdentificationStageRequest",
    "authentik_stages_email.emailstage": "EmailStageRequest",
    "authentik_brands.brand": "BrandRequest",
}
# Meta models have no database row and no API (blueprints/v1/meta/apply_blueprint.py,
# ApplyBlueprintMetaSerializer): their fields, and no identifiers (template_entry).
META_FIELDS = {"authentik_blueprints.metaapplyblueprint": {"identifiers": dict, "required": bool}}
# Stock objects a blueprint only changes (made by Authentik's own blueprints): their required
# fields are already set, so an entry need not repeat them.
STOCK = {("authentik_outposts.outpost", "managed"), ("authentik_brands.brand", "domain"),
         ("authentik_stages_identification.identificationstage", "name")}


class Ref:
    def __init__(self, tag: str, value):
        self.tag, self.value = tag, value


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: Ref("!" + suffix, (
    loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode)
    else loader.construct_scalar(node))))


def _has_ref(v) -> bool:
    if isinstance(v, Ref):
        return True
    if isinstance(v, dict):
        return any(_has_ref(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_ref(x) for x in v)
    return False


def _refs(v):
    if isinstance(v, Ref):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _refs(x)
    elif isinstance(v, list):
        for x in v:
            yield from _refs(x)


def _plain(v):
    """The document with tags as strings, for the JSON Schema envelope check."""
    if isinstance(v, Ref):
        return f"{v.tag} {v.value}"
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _request_class(model: str):
    models = importlib.import_module("authentik_client.models")
    return getattr(models, REQUEST_MODEL[model])


def problems(doc: dict) -> list[str]:
    """Everything in one blueprint that Authentik's schema at the pin would refuse."""
    out = [f"envelope: {e.message} at {list(e.absolute_path)}"
           for e in jsonschema.Draft7Validator(ENVELOPE).iter_errors(_plain(doc))]
    if out:
        return out
    ids: set[str] = set()
    for i, e in enumerate(doc["entries"]):
        where = f"entries[{i}] {e['model']}"
        fields = {**e.get("identifiers", {}), **e.get("attrs", {})}
        for r in _refs(e):
            if r.tag == "!KeyOf" and r.value not in ids:
                out.append(f"{where}: !KeyOf {r.value} names no earlier entry id")
        if e["model"] in META_FIELDS:
            spec = META_FIELDS[e["model"]]
            if "identifiers" in e:
                out.append(f"{where}: a meta model takes no identifiers")
            out += [f"{where}: unknown field {k}" for k in e.get("attrs", {}) if k not in spec]
            out += [f"{where}: {k} is not a {t.__name__}" for k, t in spec.items()
                    if k in e.get("attrs", {}) and not isinstance(e["attrs"][k], t)]
        elif e["model"] not in REQUEST_MODEL:
            out.append(f"{where}: a model this test has no serializer for (add it to REQUEST_MODEL)")
        else:
            cls = _request_class(e["model"])
            if "identifiers" not in e:
                out.append(f"{where}: identifiers are required")
            known = {f.alias or n: n for n, f in cls.model_fields.items()}
            obj = cls.model_construct()
            for k, v in fields.items():
                if k not in known:
                    out.append(f"{where}: {k} is not a field of {cls.__name__}")
                elif not _has_ref(v):
                    try:
                        setattr(obj, known[k], v)  # the generated models validate on assignment
                    except pydantic.ValidationError as exc:
                        out.append(f"{where}: {k}={v!r}: {str(exc).splitlines()[-2].strip()}")
            if e.get("state", "present") in ("present", "created", "must_created") and not any(
                    (e["model"], k) in STOCK for k in e.get("identifiers", {})):
                out += [f"{where}: required field {f.alias or n} missing" for n, f in cls.model_fields.items()
                        if f.is_required() and (f.alias or n) not in fields]
        if "id" in e:
            ids.add(e["id"])
    return out


def _blueprints(domain_users: int = 3, edit=None) -> dict[str, dict]:
    files = render_site(make_site(domain_users, edit), FakeSecrets())
    out = {p: yaml.load(f.content, Loader=_Loader) for p, f in files.items()
           if p.startswith(AUTHENTIK_DIR + "/")}
    assert out, "an Authentik site renders blueprints"
    return out


def test_every_rendered_blueprint_fits_the_schema_at_the_pin():
    docs = _blueprints()
    assert {"site.yaml", "flows.yaml", "user-user1.yaml"} <= {p.rsplit("/", 1)[1] for p in docs}
    found = {p: problems(d) for p, d in docs.items()}
    assert found == {p: [] for p in docs}


def test_with_smtp_the_blueprints_still_fit_and_authentik_mails_through_it():
    edit = lambda d: d.update(smtp={"host": "mail.example.org", "sender": "ai@example.org"})  # noqa: E731
    docs = _blueprints(2, edit)
    assert all(problems(d) == [] for d in docs.values())
    (mail,) = [e for e in docs[f"{AUTHENTIK_DIR}/flows.yaml"]["entries"] if e["model"] == "authentik_stages_email.emailstage"]
    assert mail["attrs"]["use_global_settings"] is True  # no SMTP secret in a blueprint
    files = render_site(make_site(2, edit), FakeSecrets())
    env = yaml.safe_load(files["services/authentik/docker-compose.yml"].content)["services"]["worker"]["environment"]
    assert {k: env[k] for k in env if k.startswith("AUTHENTIK_EMAIL__")} == {
        "AUTHENTIK_EMAIL__HOST": "mail.example.org", "AUTHENTIK_EMAIL__PORT": "587",
        "AUTHENTIK_EMAIL__FROM": "ai@example.org", "AUTHENTIK_EMAIL__USE_TLS": "true", "AUTHENTIK_EMAIL__USE_SSL": "false"}


# The check must be able to fail: each of these is a mistake Authentik would refuse or drop.
BAD = [
    ("a field the serializer does not have", lambda e: e["attrs"].update(continue_without_invitation=False),
     "is not a field of InvitationStageRequest"),
    ("a value of the wrong enum", lambda e: e["attrs"].update(user_creation_mode="sometimes"),
     "user_creation_mode="),
    ("token expiry as the old integer", lambda e: e["attrs"].update(token_expiry=30), "token_expiry=30"),
    ("a flow without its designation", lambda e: e["attrs"].pop("designation"), "required field designation"),
    ("an unknown state", lambda e: e.update(state="exists"), "envelope"),
]


@pytest.mark.parametrize(("what", "change", "expect"), BAD, ids=[b[0] for b in BAD])
def test_the_check_refuses(what, change, expect):
    doc = _blueprints()[f"{AUTHENTIK_DIR}/flows.yaml"]
    models = {"is not a field of InvitationStageRequest": "authentik_stages_invitation.invitationstage",
              "user_creation_mode=": "authentik_stages_user_write.userwritestage",
              "token_expiry=30": "authentik_stages_email.emailstage",
              "required field designation": "authentik_flows.flow", "envelope": "authentik_flows.flow"}
    entry = next(e for e in doc["entries"] if e["model"] == models[expect])
    change(entry)
    assert any(expect in p for p in problems(doc)), what


def test_a_keyof_must_name_an_earlier_entry():
    doc = _blueprints()[f"{AUTHENTIK_DIR}/flows.yaml"]
    doc["entries"].reverse()
    assert any("names no earlier entry id" in p for p in problems(doc))
