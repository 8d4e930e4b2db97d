"""Access classes, operator sources and certificate planning as data (pure functions, no servers).

Nothing simulated: these are the planner's and renderer's own outputs for the seed site.
"""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from aicommons.catalog import load_catalog
from aicommons.catalog.model import Service
from aicommons.plan import certificates as certs_plan
from aicommons.render import render_site
from aicommons.render.traefik import middlewares
from tests.test_traefik_harness import FakeSecrets, make_site


def test_every_route_has_the_access_its_catalog_entry_declares():
    cat = load_catalog()
    site = make_site(3)
    assert "gateway" in site.endpoints  # the reference site's apps reach models through it
    for r in site.routes:
        declared = cat.apps[r.service].access if r.owner else (cat.services[r.service].access
                                                                 if r.kind == "http" else "operator")
        if r.service == "ollama":  # no way around the gateway's keys and budgets: operators only
            assert (declared, r.access) == ("site-users", "operator"), r.host
            continue
        assert r.access == declared, r.host
        if r.access == "public":
            assert r.own_login, f"{r.host} is public without a login of its own"
    loginless = {n for n, s in cat.services.items() if s.route and not s.own_login}
    assert {"comfyui", "automatic1111", "searxng", "libretranslate", "ollama"} <= loginless
    assert all(cat.services[n].access in ("site-users", "operator") for n in loginless)


def test_the_catalog_refuses_a_public_service_without_a_login():
    data = load_catalog().services["comfyui"].model_dump()
    data["access"] = "public"
    with pytest.raises(ValidationError, match="never public"):
        Service.model_validate(data)
    data.update(access=None)
    with pytest.raises(ValidationError, match="declares `access`"):
        Service.model_validate(data)


def test_middlewares_follow_the_access_class_alone():
    site = make_site(1)
    by_access = {}
    for r in site.routes:
        by_access.setdefault(r.access, set()).add(tuple(m if not m.startswith("authentik-user") else "owner-auth"
                                                        for m in middlewares(site, r)))
    assert by_access == {"public": {("secure-headers",)}, "site-users": {("secure-headers", "authentik-sso")},
                         "owner": {("secure-headers", "owner-auth")}, "operator": {("secure-headers", "operator-allow")}}


def test_operator_sources_never_contain_a_container_of_the_site():
    def tweak(d):
        d["network"]["user_ranges"] = ["10.0.5.200-10.0.5.249", "10.0.6.2-10.0.6.254"]
        d["network"]["traefik"]["operator_allow"] = ["10.0.0.0/16", "192.0.2.7/32"]
    site = make_site(60, tweak)
    nets = [ipaddress.ip_network(c) for c in site.operator_sources]
    for t in site.tenants:
        assert not any(ipaddress.ip_address(t.ip) in n for n in nets), t.ip
    for ok in ("10.0.5.99", "10.0.5.250", "10.0.4.10", "10.0.200.1", "192.0.2.7"):
        assert any(ipaddress.ip_address(ok) in n for n in nets), ok
    # users, and shared services too: a compromised shared service is no operator
    assert not any(ipaddress.ip_address(x) in n for n in nets
                   for x in ("10.0.6.2", "10.0.6.254", "10.0.5.200", "10.0.5.100", "10.0.5.129", "10.0.5.199"))
    files = render_site(site, FakeSecrets())
    hba = files["services/postgres/pg_hba.conf"].content
    ops = [line.split()[3] for line in hba.splitlines() if line.startswith("host    all  postgres") and
           "operators" in line]
    # the portal (the control plane's user operations) is the one shared container let in as the superuser
    assert tuple(ops) == (f"{site.endpoints['portal'].host}/32", *site.operator_sources)
    assert site.endpoints["portal"].host == "10.0.5.129"
    assert "10.0.0.0/16" not in hba


def _units(users: range, domain: str = "example.org") -> list[tuple[str, ...]]:
    apps = ("ai", "n8n", "jupyter", "code", "bigagi", "kotaemon", "chainforge", "flowise")
    shared = tuple(f"{p}.{domain}" for p in ("traefik", "auth", "git", "ollama", "grafana"))
    return [shared] + [tuple(f"{a}-user{i}.{domain}" for a in apps) for i in users]


def test_certificates_pack_hosts_into_at_most_a_hundred_names():
    certs = certs_plan.plan_certificates(_units(range(1, 51)))
    assert len(certs) <= 10 and all(len(c.hosts) <= certs_plan.MAX_NAMES for c in certs)
    hosts = [h for c in certs for h in c.hosts]
    assert len(hosts) == len(set(hosts)) == 5 + 50 * 8
    for c in certs:  # a user's hosts share one certificate
        users = {h.split("-", 1)[1] for h in c.hosts if "-user" in h}
        assert all(sum(h.endswith(f"-{u}") for cc in certs for h in cc.hosts) == 8 for u in users)


def test_certificates_stay_put_as_users_come_and_go():
    current = {c.name: c.hosts for c in certs_plan.plan_certificates(_units(range(1, 51)))}
    # a new user: exactly one certificate changes (it joins one with room, or opens a new one)
    plus = certs_plan.plan_certificates(_units(range(1, 52)), current)
    assert len(certs_plan.changes(current, plus)) == 1
    assert all(c.hosts[:len(current[c.name])] == current[c.name] for c in plus if c.name in current)
    # user7 leaves: only its certificate changes; user60 then takes the room it left
    gone = [u for u in _units(range(1, 51)) if not u[0].startswith("ai-user7.")]
    minus = certs_plan.plan_certificates(gone, current)
    assert certs_plan.changes(current, minus) == {next(n for n, hs in current.items()
                                                       if "ai-user7.example.org" in hs): "changed"}
    again = certs_plan.plan_certificates(gone + _units(range(60, 61))[1:], {c.name: c.hosts for c in minus})
    diff = certs_plan.changes({c.name: c.hosts for c in minus}, again)
    assert diff == {next(n for n, hs in current.items() if "ai-user7.example.org" in hs): "changed"}
    # the assignment round-trips through the state's JSON
    assert certs_plan.from_json(certs_plan.to_json(again)) == {c.name: c.hosts for c in again}


def test_dns01_is_one_wildcard_and_plan_warns_before_the_weekly_limit():
    s = make_site(2, lambda d: d["network"]["traefik"].update(dns_provider="cloudflare"))
    assert [(c.name, c.wildcard) for c in s.certificates] == [("wildcard", True)]
    # 650 users from nothing: 8 hosts each, 12 users per certificate -> more than 50 certificates
    big = make_site(2, lambda d: d["network"].update(user_ranges=[f"10.0.{n}.2-10.0.{n}.254" for n in (6, 7, 8)])
                    or d.update(users=[{"name": f"u{i}", "email": f"u{i}@example.org"} for i in range(1, 651)]))
    assert len(big.certificates) > certs_plan.WEEKLY_LIMIT
    assert any("Let's Encrypt" in n and "per week" in n for n in big.notes)
    small = make_site(50)
    assert not any("Let's Encrypt" in n for n in small.notes) and len(small.certificates) == 5


def test_traefiks_source_is_derived_per_driver_and_every_trusted_proxy_names_it():
    """Issue #21: on LXC Traefik dials the containers from the bridge's address (10.0.5.1), not
    from 10.0.4.10 where it listens, so a trusted-proxy setting naming 10.0.4.10 never matched."""
    from aicommons.plan.access import proxy_source
    from aicommons.render.bridge_filter import bridge_rules
    from aicommons.render.shared_compose import authentik
    from aicommons.spec.models import Site

    lxc = Site.model_validate({"name": "s1", "domain": "example.org", "driver": {"kind": "lxc"}})
    pve = make_site(1)
    assert proxy_source(lxc) == "10.0.5.1" and pve.proxy_source == "10.0.4.10"
    auth = next(c for c in pve.containers if c.name == "authentik")
    text = "".join(f.content for f in authentik(pve, auth, FakeSecrets()))
    assert "AUTHENTIK_LISTEN__TRUSTED_PROXY_CIDRS: 10.0.4.10/32" in text
    rules = bridge_rules(lxc).splitlines()
    # Only frames the namespace sends from Traefik's source reach a user's service ports.
    assert "-A OUTPUT -p IPv4 --ip-src ! 10.0.5.1 --ip-dst 10.0.5.200/29 --ip-proto tcp --ip-dport 0:32767 -j DROP" in rules
    assert "-A FORWARD -p IPv4 --ip-dst 10.0.5.200/29 -j AIC-TO-USER" in rules
    assert "-A AIC-TO-USER -p IPv4 --ip-proto tcp --ip-dport 0:32767 -j DROP" in rules
    assert "-A FORWARD -p ARP --arp-ip-src 10.0.5.1 -j DROP" in rules  # no container speaks as the gateway


def test_ollamas_route_is_for_site_users_only_where_no_gateway_fronts_it():
    def no_gateway(d):
        d["services"].pop("gateway", None)

    site = make_site(2, no_gateway)
    assert "gateway" not in site.endpoints
    assert next(r for r in site.routes if r.service == "ollama").access == "site-users"
