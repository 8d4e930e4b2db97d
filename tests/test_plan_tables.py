"""Allocation and validation, table-driven (tests/cases/*.yaml). Pure code: nothing real or simulated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aicommons.errors import SiteInvalid
from aicommons.plan import check, resolve
from aicommons.spec import load_text
from tests.sitegen import DELETE, seed_dict, set_path

CASES = Path(__file__).parent / "cases"


def _cases(name: str):
    items = yaml.safe_load((CASES / name).read_text())
    return [pytest.param(c, id=c["name"]) for c in items]


def _apply(edit: dict, users: int = 50) -> str:
    data = seed_dict(users)
    for path, value in edit.items():
        set_path(data, path, DELETE if value == "~delete" else value)
    return yaml.safe_dump(data, sort_keys=False)


def problems_of(text: str):
    try:
        site, index = load_text(text)
    except SiteInvalid as exc:
        return exc.problems
    return check(site, index=index)


@pytest.mark.parametrize("case", _cases("validation.yaml"))
def test_invalid_site_names_the_field(case):
    problems = problems_of(_apply(case["edit"]))
    assert problems, "the site should have been refused"
    want = case["expect"]
    hits = [p for p in problems if p.path == want["path"] and want["says"] in p.message]
    assert hits, f"no problem at {want['path']} saying {want['says']!r}; got " + "; ".join(
        f"{p.path}: {p.message}" for p in problems)
    assert all(p.fix for p in problems), "every problem says how to fix it"
    assert hits[0].line is not None and hits[0].line >= 1


@pytest.mark.parametrize("case", _cases("allocation.yaml"))
def test_allocation(case):
    site, index = load_text(_apply(case["edit"], case.get("users", 50)))
    r = resolve(site, index=index)
    want = case["expect"]
    shared = [c for c in r.containers if c.role == "shared"]
    users = [c for c in r.containers if c.role == "user"]
    if "containers" in want:
        assert len(r.containers) == want["containers"]
    if "shared" in want:
        assert len(shared) == want["shared"]
    if "users" in want:
        assert len(users) == want["users"]
    by_name = {c.hostname if c.role == "shared" else c.name: c for c in r.containers}
    for name, (ctid, ip, tfile) in want.get("at", {}).items():
        c = by_name[name]
        assert (c.ctid, c.ip, c.traefik_file) == (ctid, ip, tfile), name
    for name in want.get("absent", []):
        assert name not in by_name


def test_seed_plan_has_seed_totals_and_no_clash():
    site, _ = load_text(_apply({}))
    r = resolve(site)
    assert r.totals.shared_containers == 33 + 2  # the seed's 33, the portal and the model gateway
    assert r.totals.user_containers == 50
    assert r.totals.app_instances == 400
    for attr in ("ctid", "ip", "traefik_file", "hostname"):
        values = [getattr(c, attr) for c in r.containers]
        assert len(values) == len(set(values)), attr
    hosts = [x.host for x in r.routes]
    assert len(hosts) == len(set(hosts))
    u1 = r.tenant("user1")
    assert u1.hosts["openwebui"] == "ai-user1.valuechainhackers.xyz"
    assert u1.hosts["n8n"] == "n8n-user1.valuechainhackers.xyz"
    assert "openwebui_user1" in u1.databases and u1.redis_prefix == "t:user1:"
    assert len(set(u1.ports.values())) == len(u1.ports) == 8
    assert r.proxy_file == "204010.yml"
    # no HTTP route for databases and caches
    assert not [x for x in r.routes if x.service in ("postgres", "redis")]
    # apps without a login of their own are owner-only
    assert all(x.access == "owner" for x in r.routes if x.owner)


def test_held_slot_wins_over_file_order():
    site, _ = load_text(_apply({}))
    # user1 was removed from the file; user2 is held at .200 by state: nobody else may take it.
    site.users.pop(0)
    r = resolve(site, held={"user2": "10.0.5.230"})
    assert r.tenant("user2").ip == "10.0.5.230"
    assert r.tenant("user3").ip == "10.0.5.200"


def test_held_slot_conflicting_with_fixed_slot_is_refused():
    site, _ = load_text(_apply({"users.0.slot": "10.0.5.240"}))
    problems = check(site, held={"user1": "10.0.5.200"})
    assert [p for p in problems if p.path == "users[0].slot" and "moving a live container" in p.message]
