"""A stand-in for Authentik's server on :9000: its embedded proxy outpost (forward auth for
Traefik) and the OAuth authorize step of its core. SIMULATED: Authentik does not install from
PyPI, Debian or npm. It follows the outpost's protocol as Authentik's Go source has it
(goauthentik/authentik, internal/outpost/proxyv2/application/):

- `GET /outpost.goauthentik.io/auth/traefik` (mode_forward.go, forwardHandleTraefik): the URL
  asked for is rebuilt from X-Forwarded-Proto/Host/Uri (mode_common.go getTraefikForwardUrl);
  the application is the proxy provider whose external_host is that host. A session with claims
  -> 200 with the X-authentik-* headers (addHeaders); no session -> a redirect to sign in.
  Outposts of the redirectToStart era (oauth_redirect.go) answer
  `302 <external_host>/outpost.goauthentik.io/start?rd=<url>`; newer ones go straight to the
  authorize URL (handleAuthStart). `start_hop=True|False` picks which one this stand-in plays.
- `GET /outpost.goauthentik.io/start?rd=` on the app's host (application.go): `rd` is kept only
  if its host is the external host (oauth_state.go checkRedirectParam); a signed state is stored
  with the session and the browser goes to Authentik's authorize URL, whose host is the outpost
  config's `authentik_host` (endpoint.go GetOIDCEndpoint, embedded outpost).
- `GET /outpost.goauthentik.io/callback?X-authentik-auth-callback=true&code=&state=` on the app's
  host: the state must belong to the session (stateFromRequest), the code is redeemed, the claims
  go into the session, whose cookie `authentik_proxy_<8>` (per application, host-only, HttpOnly,
  Secure for https, SameSite=Lax: session.go getStore) goes back with a redirect to the saved URL.
- Authorize (Authentik core, /application/o/authorize/): a user who is not signed in to Authentik
  is sent to the authentication flow; a signed-in user is admitted only if a policy binding of the
  application lets them in (group membership; an application without bindings admits everyone),
  else "Permission denied" (403); redirect_uri must be the provider's callback.

Who the applications, users, groups and bindings are is read from the *rendered* blueprints, so
the test also checks that the blueprints and the Traefik files agree. Signing in to Authentik
itself (the flow executor) is replaced by `GET /stand-in/sign-in?user=NAME` on the auth host.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlencode, urlsplit

import yaml

from aicommons.render.authentik import TagLoader

CALLBACK = "/outpost.goauthentik.io/callback"
START = "/outpost.goauthentik.io/start"
AUTH_PATH = "/outpost.goauthentik.io/auth/traefik"
AUTHORIZE = "/application/o/authorize/"
LOGIN_FLOW = "/if/flow/default-authentication-flow/"
AK_SESSION = "authentik_session"  # Authentik core's own session cookie (signing in to Authentik)
DENIED = b"Permission denied"
LOGIN_PAGE = b"authentik: sign in"


@dataclass
class App:
    slug: str
    external_host: str  # https://host
    provider: str
    groups: set[str] = field(default_factory=set)  # bound groups (empty: no binding = everyone)

    @property
    def host(self) -> str:
        return urlsplit(self.external_host).netloc

    @property
    def cookie(self) -> str:
        return "authentik_proxy_" + hashlib.sha256(self.slug.encode()).hexdigest()[:8]

    @property
    def redirect_uri(self) -> str:
        return self.external_host + CALLBACK + "?" + urlencode({"X-authentik-auth-callback": "true"})


@dataclass
class Directory:
    """What the rendered blueprints say: applications by host, users and their groups."""

    apps: dict[str, App]
    users: dict[str, dict]
    outpost_providers: set[str]
    authentik_host: str

    @classmethod
    def from_blueprints(cls, texts: list[str]) -> Directory:
        apps: dict[str, App] = {}
        users: dict[str, dict] = {}
        outpost_providers: set[str] = set()
        authentik_host = ""
        for text in texts:
            doc = yaml.load(text, Loader=TagLoader)
            ids: dict[str, dict] = {}
            for e in doc["entries"]:
                if "id" in e:
                    ids[e["id"]] = e

            def group_of(ref, ids=ids):
                # !KeyOf id (a string) or !Find [authentik_core.group, [name, NAME]]
                if isinstance(ref, str):
                    return ids[ref]["identifiers"]["name"]
                assert ref[0] == "authentik_core.group" and ref[1][0] == "name", ref
                return ref[1][1]

            for e in doc["entries"]:
                m = e["model"]
                if m == "authentik_core.user":
                    users[e["identifiers"]["username"]] = {
                        "path": e["identifiers"].get("path", ""), "email": e["attrs"].get("email", ""),
                        "groups": {group_of(g) for g in e["attrs"].get("groups", [])},
                        "active": e["attrs"].get("is_active", True)}
                elif m == "authentik_core.application":
                    prov = ids[e["attrs"]["provider"]]
                    assert prov["attrs"]["mode"] == "forward_single"
                    app = App(e["identifiers"]["slug"], prov["attrs"]["external_host"], prov["identifiers"]["name"])
                    apps[app.host] = app
                    e["_app"] = app
                elif m == "authentik_outposts.outpost":
                    outpost_providers = {p[1][1] for p in e["attrs"]["providers"]}
                    authentik_host = e["attrs"]["config"]["authentik_host"].rstrip("/")
            for e in doc["entries"]:
                # bindings of applications (flows.yaml binds policies to flow stages: not access)
                if e["model"] == "authentik_policies.policybinding" and \
                        ids[e["identifiers"]["target"]]["model"] == "authentik_core.application":
                    ids[e["identifiers"]["target"]]["_app"].groups.add(group_of(e["attrs"]["group"]))
        return cls(apps, users, outpost_providers, authentik_host)

    def admits(self, app: App, user: str) -> bool:
        u = self.users.get(user)
        if u is None or not u["active"]:
            return False
        return not app.groups or bool(app.groups & u["groups"])


class Outpost:
    """State shared by every listener of the stand-in (it may be served on several ports)."""

    def __init__(self, directory: Directory, start_hop: bool = True) -> None:
        self.dir = directory
        self.start_hop = start_hop
        self.lock = threading.Lock()
        self.sessions: dict[str, dict] = {}  # outpost session id -> {"claims", "states", "redirect"}
        self.ak_sessions: dict[str, str] = {}  # Authentik core session -> user
        self.codes: dict[str, tuple[str, str]] = {}  # code -> (user, client_id)
        self.log: list[tuple[str, str, int]] = []  # (host, path, status) for the tests to read

    def claims(self, user: str, app: App) -> dict:
        u = self.dir.users[user]
        return {"preferred_username": user, "email": u["email"], "name": user, "sub": hashlib.sha256(
            user.encode()).hexdigest(), "groups": sorted(u["groups"]), "app": app.slug}

    def session_for(self, user: str, host: str, core_session: str | None = None) -> tuple[str, str]:
        """(cookie name, value) of a finished sign-in: what the flow leaves in the browser. Only for
        users the application's bindings admit (the flow refuses everyone else). `core_session`:
        the Authentik session it came from (tests/standins/authentik_api.py sign_in)."""
        app = self.dir.apps[host]
        if not self.dir.admits(app, user):
            raise PermissionError(f"{user} is not admitted to {host}")
        sid = secrets.token_urlsafe(16)
        with self.lock:
            self.sessions[sid] = {"claims": self.claims(user, app), "states": {}, "app": app.slug,
                                  "core": core_session}
        return app.cookie, sid

    def end_core_session(self, core_session: str) -> None:
        """An Authentik session was deleted: Authentik tells its outposts (providers/proxy/signals.py
        logout_proxy_revoke -> proxy_on_logout), which drop every session that came from it."""
        with self.lock:
            self.sessions = {k: s for k, s in self.sessions.items() if s.get("core") != core_session}

    def handler(self):
        outpost = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                status = self._route()
                outpost.log.append((self.headers.get("Host", ""), self.path, status))

            def _cookies(self) -> dict[str, str]:
                c = SimpleCookie()
                c.load(self.headers.get("Cookie", ""))
                return {k: v.value for k, v in c.items()}

            def _send(self, code: int, headers: dict | None = None, body: bytes = b"", cookies=()) -> int:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                for c in cookies:
                    self.send_header("Set-Cookie", c)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return code

            def _session(self, app: App, create: bool) -> tuple[str | None, dict | None, list[str]]:
                sid = self._cookies().get(app.cookie)
                with outpost.lock:
                    s = outpost.sessions.get(sid) if sid else None
                    if s is not None and s["app"] != app.slug:
                        s = None  # a cookie of another application's session is no session here
                    if s is None and create:
                        sid = secrets.token_urlsafe(16)
                        s = outpost.sessions[sid] = {"claims": None, "states": {}, "app": app.slug}
                        secure = "; Secure" if app.external_host.startswith("https") else ""
                        return sid, s, [f"{app.cookie}={sid}; Path=/; HttpOnly{secure}; SameSite=Lax"]
                return sid, s, []

            def _authorize_url(self, app: App, sid: str, s: dict, rd: str) -> str:
                state = secrets.token_urlsafe(24)
                with outpost.lock:
                    s["states"][state] = rd
                q = {"client_id": app.slug, "redirect_uri": app.redirect_uri, "response_type": "code",
                     "scope": "openid profile email ak_proxy", "state": state}
                return outpost.dir.authentik_host + AUTHORIZE + "?" + urlencode(q)

            def _route(self) -> int:
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                host = self.headers.get("Host", "")
                if url.path == AUTH_PATH:
                    return self._forward_auth()
                auth_host = urlsplit(outpost.dir.authentik_host).netloc
                if host == auth_host:
                    return self._core(url.path, q)
                app = outpost.dir.apps.get(host)
                if app is None or app.provider not in outpost.dir.outpost_providers:
                    return self._send(400, body=b"no application for this host")
                if url.path == START:
                    rd = q.get("rd", "")
                    if urlsplit(rd).netloc != app.host:  # checkRedirectParam
                        rd = app.external_host + "/"
                    sid, s, set_c = self._session(app, create=True)
                    return self._send(302, {"Location": self._authorize_url(app, sid, s, rd)}, cookies=set_c)
                if url.path == CALLBACK and q.get("X-authentik-auth-callback") == "true":
                    sid, s, _ = self._session(app, create=False)
                    with outpost.lock:
                        rd = s["states"].pop(q.get("state", ""), None) if s else None
                        code = outpost.codes.pop(q.get("code", ""), None)
                    if rd is None or code is None or code[1] != app.slug:
                        return self._send(400, body=b"invalid state or code")
                    with outpost.lock:
                        s["claims"] = outpost.claims(code[0], app)
                    secure = "; Secure" if app.external_host.startswith("https") else ""
                    return self._send(302, {"Location": rd},
                                      cookies=[f"{app.cookie}={sid}; Path=/; HttpOnly{secure}; SameSite=Lax"])
                return self._send(404, body=b"not an outpost path")

            def _forward_auth(self) -> int:
                proto = self.headers.get("X-Forwarded-Proto", "")
                host = self.headers.get("X-Forwarded-Host", "")
                uri = self.headers.get("X-Forwarded-Uri", "")
                if not proto or not host:
                    return self._send(500, body=b"configuration error")
                app = outpost.dir.apps.get(host)
                if app is None or app.provider not in outpost.dir.outpost_providers:
                    return self._send(400, body=b"no application for this host")
                fwd = f"{proto}://{host}{uri}"
                sid, s, set_c = self._session(app, create=False)
                if s and s["claims"]:
                    c = s["claims"]
                    return self._send(200, {
                        "X-authentik-username": c["preferred_username"], "X-authentik-groups": "|".join(c["groups"]),
                        "X-authentik-entitlements": "", "X-authentik-email": c["email"],
                        "X-authentik-name": c["name"], "X-authentik-uid": c["sub"], "X-authentik-jwt": "stand-in",
                        "X-authentik-meta-jwks": outpost.dir.authentik_host + "/application/o/" + app.slug + "/jwks/",
                        "X-authentik-meta-outpost": "authentik Embedded Outpost",
                        "X-authentik-meta-provider": app.provider, "X-authentik-meta-app": app.slug,
                        "X-authentik-meta-version": "stand-in"})
                if outpost.start_hop:  # redirectToStart
                    return self._send(302, {"Location": app.external_host + START + "?" + urlencode({"rd": fwd})})
                sid, s, set_c = self._session(app, create=True)  # handleAuthStart
                return self._send(302, {"Location": self._authorize_url(app, sid, s, fwd)}, cookies=set_c)

            def _core(self, path: str, q: dict) -> int:
                if path == "/stand-in/sign-in":
                    user = q.get("user", "")
                    if user not in outpost.dir.users:
                        return self._send(403, body=b"no such user")
                    sid = secrets.token_urlsafe(16)
                    outpost.ak_sessions[sid] = user
                    return self._send(200, body=b"signed in", cookies=[f"{AK_SESSION}={sid}; Path=/; HttpOnly; Secure"])
                if path == "/-/health/live/":
                    return self._send(200, {"Content-Type": "application/json"}, b"{}")
                if path == "/":  # Authentik's root sends a browser to sign in
                    return self._send(302, {"Location": LOGIN_FLOW})
                if path == LOGIN_FLOW:
                    return self._send(200, {"Content-Type": "text/html"}, LOGIN_PAGE)
                if path == AUTHORIZE:
                    app = next((a for a in outpost.dir.apps.values() if a.slug == q.get("client_id")), None)
                    if app is None or q.get("redirect_uri") != app.redirect_uri:
                        return self._send(400, body=b"invalid client or redirect_uri")
                    user = outpost.ak_sessions.get(self._cookies().get(AK_SESSION, ""))
                    if user is None:
                        nxt = AUTHORIZE + "?" + urlencode(q)
                        return self._send(302, {"Location": LOGIN_FLOW + "?" + urlencode({"next": nxt})})
                    if not outpost.dir.admits(app, user):
                        return self._send(403, {"Content-Type": "text/html"}, DENIED)
                    code = secrets.token_urlsafe(16)
                    with outpost.lock:
                        outpost.codes[code] = (user, app.slug)
                    sep = "&" if "?" in app.redirect_uri else "?"
                    loc = app.redirect_uri + sep + urlencode({"code": code, "state": q.get("state", "")})
                    return self._send(302, {"Location": loc})
                return self._send(404, body=b"not found")
        return H
