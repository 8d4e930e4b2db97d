"""Authentik, the sign-in provider of a Proxmox site: invitations, suspension, removal (its API).

The people themselves are made by the rendered blueprints (render/authentik.py: username, path
`aicommons/users`, groups), which Authentik applies on its own; this back end does what a
blueprint cannot: the one-time invitation a new person opens, and ending a person's sign-in at
once. It holds no tenant slice the engine plans (plan/addresses.py lists none for it).

Endpoints and fields are those of Authentik's API at the pinned release (the authentik-client
package of that release; the test stand-in, tests/standins/authentik_api.py, follows them):
- `GET /api/v3/core/users/?username=&path=` (paginated: `pagination`, `results`), `PATCH
  /api/v3/core/users/{pk}/` (`is_active`), `DELETE /api/v3/core/users/{pk}/`.
- `GET /api/v3/core/authenticated_sessions/?user__username=`, `DELETE .../{uuid}/`: a person's
  sessions. Deleting one is what signs the person out of the apps too: Authentik then tells its
  outposts to drop the sessions made from it (providers/proxy/signals.py logout_proxy_revoke ->
  proxy_on_logout). Deactivating has no such hook (core/signals.py), so suspend deletes them.
- `GET /api/v3/flows/instances/?slug=`: the enrollment flow's pk.
- `POST /api/v3/stages/invitation/invitations/` (name, expires, fixed_data, single_use, flow);
  `GET|DELETE .../{invite_uuid}/`; `GET ...?name=`. The invitation's pk is the `itoken` of the
  link (stages/invitation/stage.py), made by Authentik, so `invite` returns it.
The token is the bootstrap token (AUTHENTIK_BOOTSTRAP_TOKEN: an API token of akadmin).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.model import Tenant
from aicommons.render.authentik_flows import ENROLLMENT_FLOW, USER_PATH
from aicommons.tenancy.base import AuditCheck, Secrets

API = "/api/v3"


def invitation_name(user: str) -> str:
    return f"aicommons-{user}"  # Invitation.name: ^[-a-zA-Z0-9_]+$ (user names are a subset)


@dataclass
class AuthentikBackend:
    url: str  # http://<authentik>:9000
    token: str
    transport: httpx.BaseTransport | None = None
    wait_s: float = 90.0  # how long `invite` waits for Authentik to apply a new person's blueprint
    name: str = "authentik"
    service: str = "authentik"
    plans_slices: bool = False  # the engine reads and plans nothing here (engine/api.py _refresh)

    @classmethod
    def for_site(cls, resolved, secrets) -> AuthentikBackend:
        from aicommons.plan.identity import sign_in
        from aicommons.plan.secrets import SITE_SCOPE

        s = sign_in(resolved)
        assert s is not None and s.provider == "authentik"
        return cls(s.base_url, secrets(SITE_SCOPE, "authentik_bootstrap_token"))

    # ---- HTTP ------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            with httpx.Client(base_url=self.url + API, transport=self.transport, timeout=15,
                              headers={"Authorization": f"Bearer {self.token}"}) as c:
                r = c.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise TemporaryError(f"Authentik at {self.url} is not reachable: {exc}", delay=2.0) from None
        if r.status_code in (401, 403):
            raise PermanentError(f"Authentik at {self.url} refused aicommons' API token ({r.status_code}); "
                                 "the bootstrap token is set only when Authentik first starts")
        if r.status_code >= 500:
            raise TemporaryError(f"Authentik answered {r.status_code} to {method} {path}", delay=2.0)
        return r

    def _list(self, endpoint: str, **params) -> list[dict]:
        out, page = [], 1
        while page:
            r = self._call("GET", endpoint, params={**params, "page": page, "page_size": 100})
            r.raise_for_status()
            body = r.json()
            out += body["results"]
            page = int(body["pagination"]["next"])  # 0: no next page
        return out

    def _user(self, name: str) -> dict | None:
        found = [u for u in self._list("/core/users/", username=name, path=USER_PATH) if u["username"] == name]
        return found[0] if found else None

    # ---- the TenantBackend protocol (nothing planned: the blueprints make the people) --------------

    def observe(self) -> dict[str, set[str]]:
        return {}

    def ensure(self, tenant: Tenant, secrets: Secrets) -> None:
        return None

    def verify(self, tenant: Tenant, secrets: Secrets) -> list[str]:
        return []

    def audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        return []

    def end_sessions(self, user: str) -> int:
        """Delete every authenticated session of `user`; returns how many there were."""
        sessions = self._list("/core/authenticated_sessions/", user__username=user)
        for s in sessions:
            r = self._call("DELETE", f"/core/authenticated_sessions/{s['uuid']}/")
            if r.status_code not in (204, 404):
                r.raise_for_status()
        return len(sessions)

    def _set_active(self, tenant: Tenant, active: bool) -> dict | None:
        u = self._user(tenant.user)
        if u is not None and u.get("is_active") != active:
            self._call("PATCH", f"/core/users/{u['pk']}/", json={"is_active": active}).raise_for_status()
        return u

    def suspend(self, tenant: Tenant) -> None:
        """Deactivated (no new sign-in) and signed out everywhere; the account and groups stay."""
        self._set_active(tenant, False)
        self.end_sessions(tenant.user)

    def resume(self, tenant: Tenant, secrets: Secrets) -> None:
        self._set_active(tenant, True)

    def remove(self, tenant: Tenant, *, purge: bool = False) -> None:
        self.forget(tenant)

    def forget(self, tenant: Tenant) -> None:
        """`users remove`: signed out, invitations withdrawn, the account deleted (a blueprint that
        is deleted leaves its objects behind, so the account would otherwise outlive the person)."""
        u = self._set_active(tenant, False)
        self.end_sessions(tenant.user)
        self._withdraw(tenant.user)
        if u is not None:
            r = self._call("DELETE", f"/core/users/{u['pk']}/")
            if r.status_code not in (204, 404):
                r.raise_for_status()

    # ---- enrollment (ops/enroll.py) --------------------------------------------------------------

    def _withdraw(self, user: str) -> None:
        for inv in self._list("/stages/invitation/invitations/", name=invitation_name(user)):
            r = self._call("DELETE", f"/stages/invitation/invitations/{inv['pk']}/")
            if r.status_code not in (204, 404):
                r.raise_for_status()

    def invite(self, user: str, hours: int, token: str, *, now: dt.datetime | None = None) -> str:
        """A single-use invitation into the enrollment flow for `user` (their earlier ones are
        withdrawn); returns its pk, the link's `itoken`. `token` (aicommons' own) is not used:
        Authentik makes the pk."""
        # `users add` invites right after the apply that delivered the person's blueprint, which
        # Authentik's worker applies on its own moments later: wait for the user and the flow.
        deadline = time.monotonic() + self.wait_s
        while True:
            u = self._user(user)
            flows = self._list("/flows/instances/", slug=ENROLLMENT_FLOW) if u is not None else []
            if u is not None and flows:
                break
            if time.monotonic() >= deadline:
                what = f"user {user}" if u is None else f"the flow {ENROLLMENT_FLOW!r}"
                raise TemporaryError(f"Authentik has no {what} yet (its worker applies the blueprints aicommons "
                                     f"delivered); run `aicommons users invite {user}` in a minute", delay=10.0)
            time.sleep(2.0)
        self._withdraw(user)
        expires = (now or dt.datetime.now(dt.UTC)) + dt.timedelta(hours=hours)
        body = {"name": invitation_name(user), "expires": expires.isoformat(), "single_use": True,
                "flow": flows[0]["pk"], "fixed_data": {"username": user, "email": u.get("email") or ""}}
        r = self._call("POST", "/stages/invitation/invitations/", json=body)
        if r.status_code == 400:
            raise PermanentError(f"Authentik refused the invitation for {user}: {r.text[:300]}")
        r.raise_for_status()
        return str(r.json()["pk"])

    def invitation_user(self, token: str, *, now: dt.datetime | None = None) -> str | None:
        """Whose open invitation `token` is (None: unknown, used or expired)."""
        r = self._call("GET", f"/stages/invitation/invitations/{token}/")
        if r.status_code in (400, 404):  # 400: not a UUID
            return None
        r.raise_for_status()
        inv = r.json()
        expires = inv.get("expires")
        if expires and dt.datetime.fromisoformat(expires) <= (now or dt.datetime.now(dt.UTC)):
            return None
        name = (inv.get("fixed_data") or {}).get("username")
        return str(name) if name and inv.get("name") == invitation_name(str(name)) else None
