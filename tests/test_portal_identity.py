"""Who the portal believes, as pure functions: trusted peers, the token session, CSRF binding.

Real: the portal's identity module and `aicommons serve`'s argument checks. Nothing simulated
(no server runs; the browser tests in test_portal.py cover the same through Traefik).
"""

from __future__ import annotations

import time

import pytest

from aicommons.cli import main
from aicommons.errors import PermanentError
from aicommons.portal.config import PortalConfig, parse_proxies
from aicommons.portal.identity import COOKIE, csrf_ok, csrf_token, identify, session_cookie

KEY = "k" * 43
CFG = PortalConfig(site_file="site.yaml", trusted_proxies=parse_proxies(["10.0.4.10", "::1"]))
SSO = {"x-authentik-username": "alice", "x-authentik-email": "alice@example.org",
       "x-authentik-groups": "staff|aicommons-operators"}


def test_headers_are_believed_only_from_a_trusted_peer():
    ident = identify("10.0.4.10", SSO, {}, CFG, KEY)
    assert (ident.name, ident.email, ident.operator, ident.via) == ("alice", "alice@example.org", True, "sso")
    assert identify("::ffff:10.0.4.10", SSO, {}, CFG, KEY).name == "alice"  # v4-mapped: the same peer
    for peer in ("10.0.4.11", "127.0.0.1", "::2", None, "not-an-ip"):
        assert identify(peer, SSO, {}, CFG, KEY) is None
    plain = identify("::1", {**SSO, "x-authentik-groups": "staff|aicommons-operators-old"}, {}, CFG, KEY)
    assert plain.operator is False  # group names match whole, not by prefix


def test_the_operator_session_cookie_is_signed_and_expires():
    cookie = session_cookie(KEY)
    ident = identify("127.0.0.1", {}, {COOKIE: cookie}, CFG, KEY)
    assert ident.operator and ident.via == "token"
    nonce, expiry, sig = cookie.split(".")
    for bad in (f"{nonce}.{int(expiry) + 60}.{sig}", f"{nonce}.{expiry}.{'0' * 64}", "x", ""):
        assert identify("127.0.0.1", {}, {COOKIE: bad}, CFG, KEY) is None
    assert identify("127.0.0.1", {}, {COOKIE: session_cookie(KEY, now=time.time() - 9 * 3600)}, CFG, KEY) is None
    assert identify("127.0.0.1", {}, {COOKIE: cookie}, CFG, "another key") is None
    no_token = PortalConfig(site_file="site.yaml", trusted_proxies=(), admin_token=False)
    assert identify("127.0.0.1", {}, {COOKIE: cookie}, no_token, KEY) is None


def test_csrf_tokens_belong_to_one_person_and_one_session():
    alice = identify("::1", SSO, {}, CFG, KEY)
    bob = identify("::1", {**SSO, "x-authentik-username": "bob"}, {}, CFG, KEY)
    assert csrf_ok(alice, KEY, csrf_token(alice, KEY))
    assert not csrf_ok(bob, KEY, csrf_token(alice, KEY))
    assert not csrf_ok(alice, KEY, None) and not csrf_ok(alice, KEY, "")
    s1 = identify("127.0.0.1", {}, {COOKIE: session_cookie(KEY)}, CFG, KEY)
    s2 = identify("127.0.0.1", {}, {COOKIE: session_cookie(KEY)}, CFG, KEY)
    assert not csrf_ok(s2, KEY, csrf_token(s1, KEY))


def test_bad_serve_arguments_are_refused_by_name(tmp_path, capsys):
    with pytest.raises(PermanentError, match="--trusted-proxy 'traefik'"):
        parse_proxies(["traefik"])
    site = tmp_path / "site.yaml"
    site.write_text("version: 1\nname: idtest\ndomain: example.org\ndriver: {kind: lxc, netns: aic-idtest}\n"
                    "services: {postgres: {}}\nusers: []\n")
    from aicommons.drivers import registry

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "FAKE_WORLD", str(tmp_path / "world"))  # tests/fakeworld.py, in-process
        assert main(["serve", "-f", str(site), "--listen", "localhost"]) == 1
        assert "--listen 'localhost': write HOST:PORT" in capsys.readouterr().err
        assert main(["serve", "-f", str(site), "--trusted-proxy", "10.0.4.300"]) == 1
        assert "--trusted-proxy '10.0.4.300'" in capsys.readouterr().err
