"""Enrollment on an Authentik site (Proxmox): `users add`/`invite` make an Authentik invitation into
the rendered enrollment flow, and `users suspend`/`remove` end the person's sessions.

SIMULATED: Authentik's REST API (tests/standins/authentik_api.py, which parses every request
and builds every response with the pinned release's own API models from authentik-client), seeded
from the blueprints this site renders. REAL: aicommons' back end (tenancy/authentik.py) over HTTP
on loopback, ops/enroll.py and ops/users.py with a real state store (secrets encrypted), and, for
the e-mail, aiosmtpd as the SMTP server (the fixture of tests/test_enroll_mail.py). What Authentik
does with the invitation once the person opens it (the flow) is not run here: the blueprint that
defines it is checked in tests/test_authentik_blueprint_schema.py.
"""

from __future__ import annotations

import datetime as dt
import threading
from email import message_from_bytes
from email.policy import default
from http.server import ThreadingHTTPServer

import httpx
import pytest
import yaml

from aicommons.errors import PermanentError, TemporaryError
from aicommons.ops import enroll
from aicommons.ops import users as manage
from aicommons.plan import resolve
from aicommons.render.site import AUTHENTIK_DIR, render_site
from aicommons.spec.default import render_site_yaml
from aicommons.spec.load import load_site
from aicommons.tenancy.authentik import AuthentikBackend, invitation_name
from tests.test_enroll_mail import _has_aiosmtpd, _wait_message, smtp  # noqa: F401  (fixture)
from tests.test_traefik_harness import FakeSecrets

pytest.importorskip("authentik_client")
from tests.standins.authentik_api import NOW, AuthentikApi  # noqa: E402

TOKEN = "bootstrap-token-for-the-test"


def _site_file(tmp_path, edit=None):
    data = yaml.safe_load(render_site_yaml(users=2, driver="proxmox"))
    if edit:
        edit(data)
    f = tmp_path / "site.yaml"
    f.write_text(yaml.safe_dump(data, sort_keys=False))
    return f


@pytest.fixture
def world(tmp_path):
    yield from _world(tmp_path)


def _world(tmp_path, edit=None):
    f = _site_file(tmp_path, edit)
    site, _ = load_site(f)
    files = render_site(resolve(site), FakeSecrets())
    api = AuthentikApi([x.content for p, x in files.items() if p.startswith(AUTHENTIK_DIR + "/")], TOKEN)
    server, url = api.serve()
    try:
        yield {"file": f, "state": tmp_path / "state.db", "api": api,
               "backend": AuthentikBackend(url, TOKEN, wait_s=0), "domain": site.domain}
    finally:
        server.shutdown()


def _tenant(w, name):
    site, _ = load_site(w["file"])
    return resolve(site).tenant(name)


def test_an_invitation_names_the_person_and_expires(world):
    b, api = world["backend"], world["api"]
    email = _tenant(world, "user1").email
    pk = b.invite("user1", 48, "unused", now=NOW)
    inv = api.invitations[pk]
    assert inv["name"] == invitation_name("user1") and inv["single_use"] is True
    assert inv["fixed_data"] == {"username": "user1", "email": email}
    assert inv["flow"] == api.flows["aicommons-enrollment"]["pk"]  # only the rendered enrollment flow takes it
    assert dt.datetime.fromisoformat(inv["expires"]) == NOW + dt.timedelta(hours=48)
    assert b.invitation_user(pk, now=NOW) == "user1"
    assert b.invitation_user(pk, now=NOW + dt.timedelta(hours=49)) is None  # expired
    assert b.invitation_user("not-a-uuid") is None
    again = b.invite("user1", 48, "unused", now=NOW)
    assert list(api.invitations) == [again] and b.invitation_user(pk, now=NOW) is None  # the first is withdrawn


def test_a_person_authentik_has_not_made_yet_is_a_retry_not_an_invitation(world):
    b, api = world["backend"], world["api"]
    del api.users[api.user("user2")["pk"]]  # its blueprint not applied yet
    with pytest.raises(TemporaryError, match="no user user2 yet.*users invite user2"):
        b.invite("user2", 72, "unused")
    assert api.invitations == {}


def test_a_wrong_api_token_is_a_clear_error(world):
    bad = AuthentikBackend(world["backend"].url, "wrong", wait_s=0)
    with pytest.raises(PermanentError, match="refused aicommons' API token"):
        bad.invite("user1", 72, "unused")


def test_suspend_ends_every_session_and_resume_lets_the_person_sign_in_again(world):
    b, api = world["backend"], world["api"]
    t = _tenant(world, "user1")
    api.sign_in("user1"), api.sign_in("user1"), api.sign_in("user2")
    b.suspend(t)
    assert api.user("user1")["is_active"] is False and api.sessions_of("user1") == []
    assert len(api.sessions_of("user2")) == 1  # nobody else is signed out
    b.suspend(t)  # again: nothing left to do, no error
    b.resume(t, {})
    assert api.user("user1")["is_active"] is True
    api.sign_in("user1")


def test_users_invite_and_show_give_authentiks_link(world):
    w, api = world, world["api"]
    with manage.Context(w["file"], state_path=w["state"], backends=[w["backend"]]) as ctx:
        link = enroll.invite(ctx, "user1")
        (pk,) = api.invitations
        assert link == f"https://auth.{w['domain']}/if/flow/aicommons-enrollment/?itoken={pk}"
        assert ctx.secrets.get("user1", enroll.TOKEN_KEY) == pk  # kept encrypted, for `users show`
        assert enroll.pending(ctx, "user1") == link
        renewed = enroll.invite(ctx, "user1", renew=True)
        assert renewed != link and enroll.pending(ctx, "user1") == renewed and len(api.invitations) == 1
        with pytest.raises(PermanentError, match="opened at https://auth"):
            enroll.redeem(ctx, renewed.rsplit("=", 1)[1], "a-long-enough-password")  # not the portal's job here
    shown = manage.show_user(w["file"], "user1", reveal=True, state_path=w["state"])
    assert shown["sign_in"]["invitation"] == renewed


def test_users_suspend_signs_the_person_out(world):
    w, api = world, world["api"]
    api.sign_in("user2")
    assert manage.set_suspended(w["file"], "user2", True, state_path=w["state"], backends=[w["backend"]]) == ["authentik"]
    assert api.sessions_of("user2") == [] and api.user("user2")["is_active"] is False
    manage.set_suspended(w["file"], "user2", False, state_path=w["state"], backends=[w["backend"]])
    assert api.user("user2")["is_active"] is True


def test_removal_signs_out_withdraws_and_deletes_the_account(world):
    w, api = world, world["api"]
    w["backend"].invite("user2", 72, "unused")
    api.sign_in("user2")
    manage._sign_out_for_good(w["file"], "user2", w["state"], [w["backend"]])
    assert api.user("user2") is None and api.invitations == {} and api.sessions_of("user2") == []
    assert api.user("user1") is not None
    assert any(m == "DELETE" and "/core/authenticated_sessions/" in p for m, p in api.calls)  # ended, not left to cascade


@pytest.mark.skipif(not _has_aiosmtpd(), reason="Debian's python3-aiosmtpd is not installed")
def test_with_smtp_the_authentik_link_is_mailed(tmp_path, smtp):  # noqa: F811
    port, box = smtp
    edit = lambda d: d.update(smtp={"host": "127.0.0.1", "port": port, "sender": "ai@example.org",  # noqa: E731
                                    "security": "none"})
    for w in _world(tmp_path, edit):
        with manage.Context(w["file"], state_path=w["state"], backends=[w["backend"]]) as ctx:
            link = enroll.invite(ctx, "user1")
        (msg,) = _wait_message(box)
        msg = message_from_bytes(msg.as_bytes(), policy=default)
        assert msg["To"] == _tenant(w, "user1").email and link in msg.get_content()
        assert "/if/flow/aicommons-enrollment/?itoken=" in link


def test_a_suspended_person_is_signed_out_of_their_apps_at_once(tmp_path):
    """The API stand-in and the outpost stand-in together: the outpost admits the person's app
    session until `users suspend` deletes the Authentik session it came from."""
    from tests.standins.outpost import Directory, Outpost

    f = _site_file(tmp_path)
    site, _ = load_site(f)
    files = render_site(resolve(site), FakeSecrets())
    texts = [x.content for p, x in files.items() if p.startswith(AUTHENTIK_DIR + "/")]
    api, outpost = AuthentikApi(texts, TOKEN), Outpost(Directory.from_blueprints(texts), start_hop=False)
    api.on_session_end.append(outpost.end_core_session)
    host = next(h for h, app in outpost.dir.apps.items() if outpost.dir.admits(app, "user1")
                and not outpost.dir.admits(app, "user2"))
    cookie, value = outpost.session_for("user1", host, core_session=api.sign_in("user1"))
    api_server, url = api.serve()
    ak = ThreadingHTTPServer(("127.0.0.1", 0), outpost.handler())
    threading.Thread(target=ak.serve_forever, daemon=True).start()
    try:
        def forward_auth() -> int:
            return httpx.get(f"http://127.0.0.1:{ak.server_address[1]}/outpost.goauthentik.io/auth/traefik",
                             headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": host, "X-Forwarded-Uri": "/",
                                      "Cookie": f"{cookie}={value}"}).status_code
        assert forward_auth() == 200
        AuthentikBackend(url, TOKEN, wait_s=0).suspend(_tenant({"file": f}, "user1"))
        assert forward_auth() == 302  # back to sign-in, where a deactivated account cannot sign in
    finally:
        api_server.shutdown()
        ak.shutdown()
