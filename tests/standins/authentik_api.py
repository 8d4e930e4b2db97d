"""A stand-in for the part of Authentik's REST API (`/api/v3/`) aicommons calls: users, their
authenticated sessions, flows, invitations. SIMULATED: Authentik ships only as container images.

It follows the API of the pinned release as the `authentik-client` package of that release
(generated from Authentik's OpenAPI schema) has it: every request body is parsed with the
client's request model (`InvitationRequest`, `PatchedUserRequest`: a field of the wrong type is
a 400 naming it, as DRF answers) and every response is built to pass the client's response model
(`PaginatedUserList`, `Invitation`, ... `from_dict`), so the stand-in cannot drift from the schema.
Simulated, per endpoint:
- `Authorization: Bearer <token>`; anything else is 403.
- `GET /core/users/?username=&path=`, `PATCH|DELETE /core/users/{pk}/`: deleting a user deletes
  their sessions (a database cascade).
- A deleted session is told to `on_session_end` listeners, as Authentik tells its outposts
  (providers/proxy/signals.py logout_proxy_revoke): tests/standins/outpost.py drops its sessions.
- `GET /core/authenticated_sessions/?user__username=`, `DELETE .../{uuid}/`.
- `GET /flows/instances/?slug=`.
- `POST|GET /stages/invitation/invitations/` (`?name=`), `GET|DELETE .../{invite_uuid}/`; an
  unknown or malformed pk is 404.
- Lists are paginated (`page`, `page_size`; `pagination.next` is 0 on the last page).
Who exists is read from the *rendered* blueprints (users under their path, flows by slug), as
Authentik's worker would make them; a session is added with `sign_in(user)` (the flow executor is
not simulated).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import authentik_client.models as M
import pydantic
import yaml

from aicommons.render.authentik import TagLoader

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _ts(t: dt.datetime) -> str:
    return t.isoformat()


def _checked(model, doc: dict) -> dict:
    """The response as sent, once the release's response model accepts it (its to_dict would
    drop the read-only fields, such as pk)."""
    model.from_dict(doc)
    return doc


class AuthentikApi:
    def __init__(self, blueprints: list[str], token: str) -> None:
        self.token = token
        self.users: dict[int, dict] = {}
        self.flows: dict[str, dict] = {}
        self.sessions: dict[str, dict] = {}
        self.invitations: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        # told each deleted session's uuid, as Authentik tells its outposts (standins/outpost.py)
        self.on_session_end: list = []
        self.lock = threading.Lock()
        for text in blueprints:
            for e in yaml.load(text, Loader=TagLoader)["entries"]:
                if e["model"] == "authentik_core.user":
                    self.add_user(e["identifiers"]["username"], e["attrs"].get("email", ""), e["identifiers"]["path"])
                elif e["model"] == "authentik_flows.flow":
                    slug = e["identifiers"]["slug"]
                    self.flows[slug] = {"pk": str(uuid.uuid4()), "slug": slug, **e["attrs"]}

    # ---- the world the API shows -----------------------------------------------------------------

    def add_user(self, username: str, email: str = "", path: str = "users") -> dict:
        pk = max(self.users, default=0) + 1
        u = {"pk": pk, "username": username, "name": username, "is_active": True, "last_login": None,
             "date_joined": _ts(NOW), "is_superuser": False, "groups": [], "groups_obj": None, "roles": [],
             "roles_obj": None, "email": email, "avatar": "data:image/svg+xml;base64,", "attributes": {},
             "uid": uuid.uuid5(uuid.NAMESPACE_DNS, username).hex, "path": path, "type": "internal",
             "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, username)), "password_change_date": _ts(NOW),
             "last_updated": _ts(NOW)}
        self.users[pk] = u
        return u

    def user(self, username: str) -> dict | None:
        return next((u for u in self.users.values() if u["username"] == username), None)

    def sign_in(self, username: str) -> str:
        """A finished sign-in: one authenticated session of the user."""
        u = self.user(username)
        assert u is not None and u["is_active"], username
        sid = str(uuid.uuid4())
        self.sessions[sid] = {
            "uuid": sid, "current": False, "user": u["pk"], "last_ip": "10.0.4.10", "last_user_agent": "Chromium",
            "last_used": _ts(NOW), "expires": _ts(NOW + dt.timedelta(days=1)), "geo_ip": None, "asn": None,
            "user_agent": {"device": {"family": "Other"}, "os": {"family": "Linux"}, "string": "Chromium",
                           "user_agent": {"family": "Chromium", "major": "1", "minor": "0", "patch": "0"}}}
        return sid

    def sessions_of(self, username: str) -> list[dict]:
        u = self.user(username)
        return [s for s in self.sessions.values() if u is not None and s["user"] == u["pk"]]

    def _flow_obj(self, slug: str) -> dict:
        f = self.flows[slug]
        return {"pk": f["pk"], "policybindingmodel_ptr_id": f["pk"], "name": f["name"], "slug": slug,
                "title": f["title"], "designation": f["designation"], "background_url": "", "stages": [],
                "policies": [], "cache_count": 0, "export_url": f"/api/v3/flows/instances/{slug}/export/"}

    def _invitation(self, inv: dict) -> dict:
        slug = next(s for s, f in self.flows.items() if f["pk"] == inv["flow"])
        return {**inv, "created_by": {"pk": 1, "username": "akadmin", "name": "authentik Default Admin",
                                      "uid": "0" * 64}, "flow_obj": self._flow_obj(slug)}

    # ---- HTTP --------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, q: dict[str, str], body: bytes) -> tuple[int, object]:
        self.calls.append((method, path))
        parts = [p for p in path.removeprefix("/api/v3/").split("/") if p]
        with self.lock:
            if parts == ["core", "users"] and method == "GET":
                rows = [u for u in self.users.values() if all(
                    str(u.get(k)) == v for k, v in q.items() if k in ("username", "path", "email"))]
                return self._page(rows, q, M.PaginatedUserList)
            if parts[:2] == ["core", "users"] and len(parts) == 3:
                u = self.users.get(int(parts[2])) if parts[2].isdigit() else None
                if u is None:
                    return 404, {"detail": "Not found."}
                if method == "PATCH":
                    req = M.PatchedUserRequest.from_dict(json.loads(body))
                    u.update(req.to_dict())
                    return 200, _checked(M.User, u)
                if method == "DELETE":
                    del self.users[u["pk"]]
                    for k in [k for k, s in self.sessions.items() if s["user"] == u["pk"]]:
                        self._end(k)
                    return 204, None
            if parts == ["core", "authenticated_sessions"] and method == "GET":
                u = self.user(q.get("user__username", ""))
                rows = [s for s in self.sessions.values() if u is not None and s["user"] == u["pk"]] \
                    if "user__username" in q else list(self.sessions.values())
                return self._page(rows, q, M.PaginatedAuthenticatedSessionList)
            if parts[:2] == ["core", "authenticated_sessions"] and len(parts) == 3 and method == "DELETE":
                return (204, None) if self._end(parts[2]) else (404, {"detail": "Not found."})
            if parts == ["flows", "instances"] and method == "GET":
                rows = [self._flow_obj(s) for s in self.flows if q.get("slug", s) == s]
                return self._page(rows, q, M.PaginatedFlowList)
            if parts == ["stages", "invitation", "invitations"]:
                if method == "POST":
                    req = M.InvitationRequest.from_dict(json.loads(body))
                    if req.flow is not None and str(req.flow) not in {f["pk"] for f in self.flows.values()}:
                        return 400, {"flow": [f'Invalid pk "{req.flow}" - object does not exist.']}
                    inv = {"pk": str(uuid.uuid4()), **json.loads(req.to_json())}
                    self.invitations[inv["pk"]] = inv
                    return 201, _checked(M.Invitation, self._invitation(inv))
                if method == "GET":
                    rows = [self._invitation(i) for i in self.invitations.values() if q.get("name", i["name"]) == i["name"]]
                    return self._page(rows, q, M.PaginatedInvitationList)
            if parts[:3] == ["stages", "invitation", "invitations"] and len(parts) == 4:
                inv = self.invitations.get(parts[3])
                if inv is None:
                    return 404, {"detail": "Not found."}
                if method == "GET":
                    return 200, _checked(M.Invitation, self._invitation(inv))
                if method == "DELETE":
                    del self.invitations[parts[3]]
                    return 204, None
        return 405 if parts else 404, {"detail": f"{method} {path} is not simulated"}

    def _end(self, sid: str) -> bool:
        if self.sessions.pop(sid, None) is None:
            return False
        for tell in self.on_session_end:
            tell(sid)
        return True

    @staticmethod
    def _page(rows: list[dict], q: dict[str, str], model) -> tuple[int, dict]:
        page, size = int(q.get("page", 1)), int(q.get("page_size", 20))
        chunk = rows[(page - 1) * size: page * size]
        pages = max(1, -(-len(rows) // size))
        doc = {"pagination": {"next": page + 1 if page < pages else 0, "previous": page - 1, "count": len(rows),
                              "current": page, "total_pages": pages, "start_index": (page - 1) * size + 1,
                              "end_index": (page - 1) * size + len(chunk)},
               "results": chunk, "autocomplete": {}}
        return 200, _checked(model, doc)

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        """Listen on loopback; returns (server, base URL). Call server.shutdown() when done."""
        api = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _do(self):
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self._send(403, {"detail": "Authentication credentials were not provided."})
                u = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    code, doc = api.handle(self.command, u.path, q, body)
                except pydantic.ValidationError as exc:
                    code, doc = 400, {str(e["loc"][0]): [e["msg"]] for e in exc.errors()}
                self._send(code, doc)

            def _send(self, code: int, doc):
                data = b"" if doc is None else json.dumps(doc, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _do  # noqa: N815

        server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"
