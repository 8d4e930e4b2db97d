"""Property tests (hypothesis): random valid sites never clash; random invalid ones always fail
cleanly with a problem naming a field. Pure code: nothing real or simulated."""

from __future__ import annotations

import ipaddress

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aicommons.catalog import load_catalog
from aicommons.errors import SiteInvalid
from aicommons.plan import check, resolve
from aicommons.spec import load_text
from aicommons.spec.identity import name_problem
from tests.sitegen import seed_dict

CAT = load_catalog()
OPTIONAL = sorted(n for n, s in CAT.services.items() if s.phase == 5)
SCALABLE = sorted(n for n, s in CAT.services.items() if s.scalable)
names = st.from_regex(r"[a-z][a-z0-9]{0,10}(-[a-z0-9]{1,6})?", fullmatch=True).filter(
    lambda n: name_problem(n) is None)  # reserved names are refused by design


def _with_dependants(disabled: set[str]) -> set[str]:
    """Disabling a service disables what depends on it (else the site is invalid, correctly)."""
    out = set(disabled)
    while True:
        more = {n for n, s in CAT.services.items() if set(s.depends_on) & out} - out
        if not more:
            return out
        out |= more


@st.composite
def valid_sites(draw):
    n_users = draw(st.integers(0, 120))
    data = seed_dict(users=n_users)
    user_names = draw(st.lists(names, min_size=n_users, max_size=n_users, unique=True))
    data["users"] = [{"name": n, "email": f"{n}@example.org"} for n in user_names] or []
    for svc in _with_dependants(draw(st.sets(st.sampled_from(OPTIONAL)))):
        data["services"][svc] = {"enabled": False}
    for svc in draw(st.sets(st.sampled_from(SCALABLE))):
        data["services"][svc] = {"instances": draw(st.integers(1, 6))}
    # Some users pin a slot somewhere in the first range.
    if user_names:
        pins = draw(st.lists(st.integers(200, 249), max_size=min(5, len(user_names)), unique=True))
        for i, octet in enumerate(pins):
            data["users"][i]["slot"] = f"10.0.5.{octet}"
    return data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_sites())
def test_random_valid_sites_never_clash(data):
    site, _ = load_text(yaml.safe_dump(data))
    r = resolve(site)
    for attr in ("ctid", "ip", "traefik_file", "hostname"):
        values = [getattr(c, attr) for c in r.containers]
        assert len(values) == len(set(values)), attr
    hosts = [x.host for x in r.routes]
    assert len(hosts) == len(set(hosts))
    for t in r.tenants:
        assert len(set(t.ports.values())) == len(t.ports)
    for c in r.containers:
        ip = ipaddress.IPv4Address(c.ip)
        if c.role == "shared":
            assert 100 <= c.ctid <= 199 and ip in ipaddress.IPv4Network("10.0.5.0/24")
        else:
            assert (200 <= c.ctid <= 249) or c.ctid >= 1000
    for u in data["users"]:
        if "slot" in u:
            assert r.tenant(u["name"]).ip == u["slot"]


JUNK = st.one_of(
    st.none(), st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.text(max_size=30),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["10.0.5.101", "10.0.5.300", "x'; drop", "Ünïcode", "$(rm -rf /)", "-1", ""]),
)
PATHS = [
    ("name",), ("domain",), ("network",), ("network", "subnet"), ("network", "gateway"),
    ("network", "shared_range"), ("network", "user_ranges"), ("network", "traefik", "address"),
    ("network", "traefik", "file_pattern"), ("driver",), ("driver", "kind"), ("driver", "nodes"),
    ("services",), ("services", "ollama"), ("services", "qdrant", "address"), ("services", "redis", "instances"),
    ("user_template", "apps"), ("users",), ("users", 0), ("users", 0, "name"), ("users", 1, "slot"),
    ("redis", "databases"), ("object_storage",), ("version",),
]


def _put(data, path, value):
    cur = data
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(PATHS), JUNK)
def test_random_bad_values_fail_cleanly_naming_a_field(path, value):
    data = seed_dict(users=3)
    _put(data, path, value)
    text = yaml.safe_dump(data)
    try:
        site, index = load_text(text)
    except SiteInvalid as exc:
        assert exc.problems and all(p.message for p in exc.problems)
        assert any(p.path for p in exc.problems), [p.render() for p in exc.problems]
        return
    problems = check(site, index=index)
    # Some junk is valid by accident (e.g. a list of names); then the site must resolve cleanly.
    if problems:
        assert all(p.path and p.fix for p in problems)
    else:
        resolve(site)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_never_raises_anything_but_site_invalid(text):
    try:
        site, index = load_text(text)
    except SiteInvalid:
        return
    check(site, index=index)


@settings(max_examples=30, deadline=None)
@given(st.integers(51, 400))
def test_too_many_users_for_the_ranges_is_one_clean_problem(n):
    data = seed_dict(users=3)
    data["users"] = [{"name": f"u{i}", "email": f"u{i}@example.org"} for i in range(n)]
    site, index = load_text(yaml.safe_dump(data))
    problems = check(site, index=index)
    assume(n > 50)
    assert len(problems) == 1 and problems[0].path == "users[50]" and "no free user address" in problems[0].message
