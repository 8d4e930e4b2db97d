"""Authentik's enrollment and recovery flows for site users (one blueprint, pure).

Enrollment (`aicommons-enrollment`): a person aicommons made (render/authentik.py user_blueprint:
path `aicommons/users`, groups set) gets an invitation from `users add` (tenancy/authentik.py,
`POST /api/v3/stages/invitation/invitations/` with `fixed_data` {username, email}, `expires`,
`single_use`, `flow` = this flow) and opens `https://auth.<domain>/if/flow/aicommons-enrollment/
?itoken=<invitation pk>`. The flow is invitation -> password prompt -> user write -> login.

Authentik's stock invitation flows create the user (user_write `always_create`); ours must not:
the user exists already, made by the blueprint with their groups, and a second user with that
username fails to save (stages/user_write/stage.py ensure_user/dispatch: IntegrityError). So the
user write stage is `never_create` and a policy on the prompt and write bindings, evaluated when
the stage runs (`evaluate_on_plan: false`, `re_evaluate_policies: true`: flows/markers.py
ReevaluateMarker), makes the invitation's person the flow's pending user. Facts it relies on:
- The invitation stage (stages/invitation/stage.py) reads `?itoken=` (saved query, SESSION_KEY_GET),
  puts the Invitation in the plan context as `invitation`, merges its `fixed_data` into the prompt
  data, and for a single-use invitation appends a final stage that deletes it once the flow ends.
  `continue_flow_without_invitation: false`: no token, no flow.
- The re-evaluation's policy request context is the plan's context (ReevaluateMarker: older
  releases pass `plan.context` itself, newer ones add the plan as `flow_plan`): the policy writes
  `pending_user` (flows/planner.py PLAN_CONTEXT_PENDING_USER) there.
- user_write `never_create` with a pending user writes the prompt data onto it; `password` goes
  through `set_password` (update_user: `set_<key>` setters).
Only users under `aicommons/users` can be reached this way, never `akadmin` or a service account.

Recovery (`aicommons-recovery`), the shape of Authentik's blueprints/example/
flows-recovery-email-verification.yaml: identification (e-mail or username) -> e-mail with a
one-time link -> new password -> user write -> login; a flow restored from the e-mailed link
skips the first two (`is_restored`). It is the default brand's recovery flow and the login page's
"forgot password" link (the stock `default-authentication-identification` stage's recovery_flow).
Those two stock objects are changed in place: the importer serializes an object it finds with
`partial=True` (blueprints/v1/importer.py, _validate_single), so only the attrs named here change.

Mail: the e-mail stage uses Authentik's global e-mail settings (`use_global_settings`), which
render/shared_compose.py sets from site.yaml `smtp:` (AUTHENTIK_EMAIL__*): a stage with its own
settings would put the SMTP password into a blueprint, which Authentik's API shows to admins.

Field names and types are those of the request serializers at the pinned release (checked by
tests/test_authentik_blueprint_schema.py against the authentik-client package of that release).
"""

from __future__ import annotations

from aicommons.plan.model import ResolvedSite

ENROLLMENT_FLOW = "aicommons-enrollment"
RECOVERY_FLOW = "aicommons-recovery"
USER_PATH = "aicommons/users"  # render/authentik.py USER_PATH (kept here so both import one way)
DEFAULT_BRAND = "authentik-default"  # blueprints/default/default-brand.yaml identifiers.domain
LOGIN_IDENTIFICATION = "default-authentication-identification"  # flow-default-authentication-flow.yaml
RECOVERY_LINK_VALIDITY = "minutes=30"  # the e-mailed reset link (EmailStage.token_expiry format)

# The person the invitation names, found among the users aicommons made; the flow then sets
# that user's password. `flow_plan` in newer releases, the plan context itself in older ones.
INVITED_USER_EXPRESSION = f"""\
# aicommons: the invitation names a person aicommons made (path {USER_PATH});
# the enrollment flow sets that person's password, nobody else's.
plan = request.context.get("flow_plan")
ctx = plan.context if plan is not None else request.context
invite = ctx.get("invitation")
name = (invite.fixed_data or {{}}).get("username") if invite is not None else None
user = ak_user_by(username=name, path="{USER_PATH}") if name else None
if user is None or not user.is_active:
    return False
ctx["pending_user"] = user
return True
"""
RESTORED_EXPRESSION = "return request.context.get('is_restored', False)\n"


def _tag(tag: str, value):
    from aicommons.render.authentik import Tag

    return Tag(tag, value)


def _key(key: str):
    return _tag("!KeyOf", key)


def _prompt(key: str, field: str, label: str, order: int) -> dict:
    return {"model": "authentik_stages_prompt.prompt", "state": "present", "id": key,
            "identifiers": {"name": f"aicommons-{key}"},
            "attrs": {"field_key": field, "label": label, "type": "password", "required": True,
                      "placeholder": label, "placeholder_expression": False, "order": order}}


def _stage(model: str, key: str, attrs: dict | None = None) -> dict:
    return {"model": model, "state": "present", "id": key, "identifiers": {"name": f"aicommons-{key}"},
            "attrs": attrs or {}}


def _binding(flow: str, stage: str, order: int, key: str | None = None, *, on_plan: bool = True,
             reevaluate: bool = False) -> dict:
    e = {"model": "authentik_flows.flowstagebinding", "state": "present",
         "identifiers": {"target": _key(flow), "stage": _key(stage), "order": order},
         "attrs": {"evaluate_on_plan": on_plan, "re_evaluate_policies": reevaluate,
                   "policy_engine_mode": "all", "invalid_response_action": "retry"}}
    if key:
        e["id"] = key
    return e


def _policy_binding(policy: str, target: str) -> dict:
    return {"model": "authentik_policies.policybinding", "state": "present",
            "identifiers": {"policy": _key(policy), "target": _key(target), "order": 0},
            "attrs": {"enabled": True, "negate": False, "timeout": 30}}


def _flow(key: str, slug: str, name: str, title: str, designation: str) -> dict:
    return {"model": "authentik_flows.flow", "state": "present", "id": key, "identifiers": {"slug": slug},
            "attrs": {"name": name, "title": title, "designation": designation,
                      "authentication": "require_unauthenticated", "policy_engine_mode": "any"}}


def flows_blueprint(resolved: ResolvedSite) -> dict:
    domain = resolved.site.domain
    entries: list[dict] = [
        _prompt("field-password", "password", "Password", 0),
        _prompt("field-password-repeat", "password_repeat", "Password (repeat)", 1),
        _stage("authentik_stages_prompt.promptstage", "prompt-password",
               {"fields": [_key("field-password"), _key("field-password-repeat")], "validation_policies": []}),
        _stage("authentik_stages_user_write.userwritestage", "user-write",
               {"user_creation_mode": "never_create", "user_path_template": USER_PATH}),
        _stage("authentik_stages_user_login.userloginstage", "user-login"),
        # enrollment: only with an invitation, only for the person it names
        _flow("enrollment", ENROLLMENT_FLOW, "aicommons enrollment", f"Welcome to {domain}: set your password",
              "enrollment"),
        _stage("authentik_stages_invitation.invitationstage", "invitation",
               {"continue_flow_without_invitation": False}),
        {"model": "authentik_policies_expression.expressionpolicy", "state": "present", "id": "invited-user",
         "identifiers": {"name": "aicommons-invited-user"}, "attrs": {"expression": INVITED_USER_EXPRESSION}},
        _binding("enrollment", "invitation", 10),
        _binding("enrollment", "prompt-password", 20, "enrollment-prompt", on_plan=False, reevaluate=True),
        _binding("enrollment", "user-write", 30, "enrollment-write", on_plan=False, reevaluate=True),
        _binding("enrollment", "user-login", 100),
        _policy_binding("invited-user", "enrollment-prompt"),
        _policy_binding("invited-user", "enrollment-write"),
        # recovery by e-mail
        _flow("recovery", RECOVERY_FLOW, "aicommons recovery", "Reset your password", "recovery"),
        _stage("authentik_stages_identification.identificationstage", "recovery-identification",
               {"user_fields": ["email", "username"], "pretend_user_exists": True}),
        _stage("authentik_stages_email.emailstage", "recovery-email",
               {"use_global_settings": True, "token_expiry": RECOVERY_LINK_VALIDITY,
                "subject": f"Reset your password at {domain}", "template": "email/password_reset.html",
                "activate_user_on_success": False}),
        {"model": "authentik_policies_expression.expressionpolicy", "state": "present", "id": "skip-if-restored",
         "identifiers": {"name": "aicommons-recovery-skip-if-restored"}, "attrs": {"expression": RESTORED_EXPRESSION}},
        _binding("recovery", "recovery-identification", 10, "recovery-identify", reevaluate=True),
        _binding("recovery", "recovery-email", 20, "recovery-mail", reevaluate=True),
        _binding("recovery", "prompt-password", 30),
        _binding("recovery", "user-write", 40),
        _binding("recovery", "user-login", 100),
        # a restored flow (the e-mailed link) already knows the person: ask nothing, mail nothing
        {**_policy_binding("skip-if-restored", "recovery-identify"), "attrs": {"enabled": True, "negate": True,
                                                                             "timeout": 30}},
        {**_policy_binding("skip-if-restored", "recovery-mail"), "attrs": {"enabled": True, "negate": True,
                                                                         "timeout": 30}},
        # where Authentik offers it: the brand's recovery flow and the login page's link
        {"model": "authentik_brands.brand", "state": "present", "identifiers": {"domain": DEFAULT_BRAND},
         "attrs": {"flow_recovery": _key("recovery")}},
        {"model": "authentik_stages_identification.identificationstage", "state": "present",
         "identifiers": {"name": LOGIN_IDENTIFICATION}, "attrs": {"recovery_flow": _key("recovery")}},
    ]
    return {"version": 1, "metadata": {"name": "aicommons enrollment and recovery",
                                       "labels": {"blueprints.goauthentik.io/instantiate": "true"}},
            "entries": entries}


def enrollment_url(auth_host: str, token: str) -> str:
    """The invitation link: Authentik's flow interface with the invitation's pk as `itoken`."""
    return f"https://{auth_host}/if/flow/{ENROLLMENT_FLOW}/?itoken={token}"
