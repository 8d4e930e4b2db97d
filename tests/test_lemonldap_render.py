"""The sign-in provider as data: what follows from `identity.provider`, and the rendered
LemonLDAP::NG files checked against 2.16's own keys. Pure code: nothing real or simulated (the
real LL::NG runs in tests/test_lemonldap.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from aicommons.catalog import load_catalog
from aicommons.plan import identity
from aicommons.plan.resolve import resolve
from aicommons.render import lemonldap as ll
from aicommons.render import traefik as tr
from aicommons.render.compose import render_compose
from aicommons.render.site import render_site
from aicommons.spec.default import LXC_CORE, render_site_yaml
from aicommons.spec.models import Site
from tests.test_traefik_harness import FakeSecrets

KEYS = Path(__file__).parent / "data" / "lemonldap-2.16-conf-keys.txt"
# How tests/data/lemonldap-2.16-conf-keys.txt was made, on a host with the Debian 12 packages:
KEYS_COMMAND = r"""
P=/usr/share/perl5/Lemonldap/NG
( perl -MLemonldap::NG::Common::Conf::DefaultValues \
    -e 'print "$_\n" for keys %{Lemonldap::NG::Common::Conf::DefaultValues->defaultValues}'
  grep -oE "^\s+[A-Za-z_][A-Za-z0-9_]*\s+=> '::" $P/Portal/Main/Plugins.pm | awk '{print $1}'
  grep -rhoE "conf\}?->\{['\"]?[A-Za-z_][A-Za-z0-9_]*['\"]?\}" $P | sed -E "s/.*\{['\"]?([A-Za-z0-9_]+)['\"]?\}/\1/"
) | sort -u
"""


def _known() -> set[str]:
    return {line for line in KEYS.read_text().splitlines() if line and not line.startswith("#")}


def _resolved(driver: str, **extra):
    data = yaml.safe_load(render_site_yaml(users=2, driver=driver, domain="example.org"))
    data.update(extra)
    return resolve(Site.model_validate(data))


def test_the_provider_follows_the_driver_and_everything_follows_the_provider():
    lxc, pve = _resolved("lxc"), _resolved("proxmox")
    assert lxc.site.identity.provider == "lemonldap" and pve.site.identity.provider == "authentik"
    a, b = identity.sign_in(lxc), identity.sign_in(pve)
    assert a.forward_auth == "http://10.0.5.146:80/traefik-auth" and a.outpost_prefix is None
    assert b.forward_auth == "http://10.0.5.146:9000/outpost.goauthentik.io/auth/traefik"
    # Traefik's middleware carries exactly the provider's address and headers ...
    for r, s in ((lxc, a), (pve, b)):
        fa = tr.proxy_file(r)["http"]["middlewares"][tr.SSO]["forwardAuth"]
        assert fa["address"] == s.forward_auth and fa["authResponseHeaders"] == list(s.response_headers)
    # ... only Authentik's hosts route the outpost's paths ...
    user_file = {t.user: tr.dynamic_file(lxc, [x for x in lxc.routes if x.owner == t.user], t.user)
                 for t in lxc.tenants}["user1"]
    assert not [n for n in user_file["http"]["routers"] if n.endswith("-outpost")]
    assert "services" not in tr.proxy_file(lxc)["http"] or tr.OUTPOST_SERVICE not in tr.proxy_file(lxc)["http"]["services"]
    # ... and the portal's and Open WebUI's trusted header is the provider's.
    assert identity.EMAIL_HEADER in a.response_headers and identity.EMAIL_HEADER in b.response_headers


def test_no_forward_auth_to_a_provider_that_is_not_there():
    """Issue 21: with the provider not deployed, every guarded router sent forward-auth to
    10.0.5.146:9000 where nothing listened, and answered 500."""
    data = yaml.safe_load(render_site_yaml(users=1, driver="lxc", domain="example.org", services=LXC_CORE))
    del data["services"]["lemonldap"]
    r = resolve(Site.model_validate(data))
    assert identity.sign_in(r) is None
    text = json.dumps([tr.proxy_file(r)] + [tr.dynamic_file(r, [x], x.owner) for x in r.routes])
    assert "forwardAuth" not in text and "10.0.5.146" not in text


def test_lmconf_uses_only_keys_lemonldap_2_16_knows_and_rules_follow_access():
    r = _resolved("lxc", smtp={"host": "mail.example.org", "sender": "ai@example.org"})
    conf = ll.lmconf(r, FakeSecrets())
    assert set(conf) <= _known(), sorted(set(conf) - _known())
    owner = [x for x in r.routes if x.access == "owner" and tr.guarded(r, x)]
    assert owner and all(conf["locationRules"][x.host] == {"default": f'$uid eq "{x.owner}"'} for x in owner)
    shared = [x for x in r.routes if x.access == "site-users" and tr.guarded(r, x)]
    assert all(conf["locationRules"][x.host] == {"default": "accept"} for x in shared)
    assert set(conf["locationRules"]) == set(conf["exportedHeaders"]) == {x.host for x in owner + shared}
    assert set(next(iter(conf["exportedHeaders"].values()))) == set(identity.LEMONLDAP_HEADERS)
    assert conf["dbiMailCol"] == "mail" and conf["SMTPTLS"] == "starttls" and conf["localSessionStorage"] == ""
    # The handler refuses a configuration without cfgDate; it changes with the content.
    other = ll.lmconf(_resolved("lxc"), FakeSecrets())
    assert conf["cfgDate"] and conf["cfgDate"] != other["cfgDate"]


def test_files_land_where_the_catalog_says_and_secrets_stay_0600():
    r, secrets = _resolved("lxc"), FakeSecrets()
    files = render_site(r, secrets)
    cfg = load_catalog().services["lemonldap"].configure
    mine = {p.split("/", 2)[2]: f for p, f in files.items() if p.startswith("services/lemonldap/")}
    assert set(cfg.files) <= set(mine)
    assert mine["lmConf-1.json"].mode == 0o600 and files["services/postgres/lemonldap.sql"].mode == 0o600
    assert "listen 10.0.5.146:80;" in mine["nginx.conf"].content
    assert f"SOURCE_SERVER={ll.HANDLER_CLASS}" in mine["fastcgi.env"].content
    assert "NPROC=2\n" in mine["fastcgi.env"].content  # two people: two workers
    assert [ll.workers(n) for n in (3, 10, 29, 50, 200)] == [2, 3, 4, 7, 7]  # one more per ten, seven at most
    # The role's password reaches PostgreSQL only as a SCRAM verifier, the same on every render.
    sql = files["services/postgres/lemonldap.sql"].content
    assert re.search(r"PASSWORD 'SCRAM-SHA-256\$4096:", sql)
    assert sql == render_site(r, secrets)["services/postgres/lemonldap.sql"].content


def test_the_schema_never_holds_the_plain_password():
    sql = ll.schema_sql("pl4in-'secret")
    assert "pl4in" not in sql and sql == ll.schema_sql("pl4in-'secret")


def test_open_webui_trusts_the_providers_header_only_where_one_signs_in():
    r = _resolved("lxc")
    text, _ = render_compose(r, r.tenants[0], FakeSecrets())
    assert f"WEBUI_AUTH_TRUSTED_EMAIL_HEADER: {identity.EMAIL_HEADER}" in text
    data = yaml.safe_load(render_site_yaml(users=1, driver="lxc", domain="example.org"))
    del data["services"]["lemonldap"]
    r = resolve(Site.model_validate(data))
    assert "WEBUI_AUTH_TRUSTED_EMAIL_HEADER" not in render_compose(r, r.tenants[0], FakeSecrets())[0]


def test_install_script_installs_what_the_recipe_names():
    """The real test needs the recipe's packages on the test host: one list, checked here."""
    script = (Path(__file__).parents[1] / "scripts" / "install.sh").read_text()
    for pkg in load_catalog().services["lemonldap"].install.packages:
        assert re.search(rf"\b{re.escape(pkg)}\b", script), pkg


def test_after_the_invitation_the_person_is_sent_on_to_their_portal_page_and_can_sign_out():
    """The invitation's last page sends the person to sign in with LL::NG's `url` (the base64 of
    the target, Portal/Main/Process.pm controlUrl) naming their portal page, when the site runs
    the portal; the portal's sign-out link is the provider's."""
    import base64
    from urllib.parse import parse_qs, urlsplit

    from aicommons.ops.enroll import after_sign_in

    lxc, pve = _resolved("lxc"), _resolved("proxmox")
    to = urlsplit(after_sign_in(lxc))
    assert (to.scheme, to.netloc, to.path) == ("https", "auth.example.org", "/")
    assert base64.b64decode(parse_qs(to.query)["url"][0]).decode() == "https://portal.example.org/me"
    assert "portal.example.org" in ll.lmconf(lxc, FakeSecrets())["locationRules"]  # guarded: LL::NG follows it
    assert after_sign_in(pve) == "https://auth.example.org/"  # Authentik: its own flow
    assert identity.sign_out_url(identity.sign_in(lxc)) == "https://auth.example.org/?logout=1"
    assert identity.sign_out_url(identity.sign_in(pve)) == "/outpost.goauthentik.io/sign_out"
    assert identity.sign_out_url(None) is None
