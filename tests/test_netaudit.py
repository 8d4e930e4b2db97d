"""The audit's network section on the LXC site (drivers/lxc/netaudit.py): which doors it tries and
how it reads what it saw. Pure: the doors come from the plan of the default site; the knocking is
replaced by a table of what each source reached (the real knocking runs in tests/e2e/test_lxc_site.py
`test_root_in_ct200_cannot_reach_the_host`, on a running site, with a door opened by hand)."""

from __future__ import annotations

import pytest

from aicommons.drivers.lxc import netaudit
from aicommons.plan.resolve import resolve
from aicommons.spec.default import LXC_CORE, render_site_yaml
from aicommons.spec.load import load_text


@pytest.fixture(scope="module")
def site():
    return resolve(load_text(render_site_yaml(users=2, driver="lxc", services=LXC_CORE))[0])


def test_the_doors_are_what_the_bridge_filter_shuts(site):
    doors = {d.label: d for d in netaudit.doors(site)}
    assert doors["user1's openwebui"].ip == "10.0.5.200" and doors["user1's openwebui"].allowed == ()
    assert "user1's big-agi" not in doors  # not run natively: no door to try
    assert doors["the model server (smollm2)"].allowed == ("10.0.5.137",)  # the gateway alone
    assert doors["Traefik's API"].ip == "10.0.4.10" and doors["Traefik's API"].allowed == ("10.0.5.129",)


def test_a_refusal_counts_only_where_the_allowed_source_gets_through(site, monkeypatch):
    api = next(d for d in netaudit.doors(site) if d.label == "Traefik's API")
    reached = {netaudit.NAMESPACE: {api}, 129: {api}, 201: set(), 102: {api}}  # CT 102 gets through: a hole

    def knock(driver, source, targets):
        return [d in reached[source] for d in targets]

    monkeypatch.setattr(netaudit, "_knock", knock)
    got = {(p.ctid, p.probe): p for p in netaudit.run(None, site, [129, 201, 102])}
    assert got[(201, "cannot reach Traefik's API at 10.0.4.10:8080")].refused is True
    assert got[(102, "cannot reach Traefik's API at 10.0.4.10:8080")].refused is False  # the hole
    control = got[(129, "reach Traefik's API at 10.0.4.10:8080")]
    assert control.refused is False and control.expect_refused is False
    # a door nothing reaches, not even its allowed source: the refusal proves nothing
    user = next(d for d in netaudit.doors(site) if d.label == "user1's openwebui")
    assert got[(201, f"cannot reach user1's openwebui at {user.ip}:{user.port}")].refused is None
