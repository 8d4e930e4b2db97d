"""The driver contract in drivers/base.py matches the drivers that exist.

Nothing simulated: the real driver classes (Proxmox, LXC, the fake) are inspected, not run.
A capability a driver implements with other parameter names than its Protocol, or a driver
method that looks like a capability but is not declared in drivers/base.py, fails here.
"""

from __future__ import annotations

import inspect

import pytest

from aicommons.drivers import base
from aicommons.drivers.fake import FakeDriver
from aicommons.drivers.lxc.driver import LxcDriver
from aicommons.drivers.proxmox.driver import ProxmoxDriver

DRIVERS = [FakeDriver, LxcDriver, ProxmoxDriver]
REQUIRED = {n for n in dir(base.ComputeDriver) if not n.startswith("_")} | {"kind"}


def _members(proto: type) -> dict[str, object]:
    own = {n: v for n, v in vars(proto).items() if not n.startswith("_")}
    own.update(dict.fromkeys(getattr(proto, "__annotations__", {})))
    return own


def _params(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.__name__)
def test_capability_methods_have_the_protocols_signature(driver):
    checked = 0
    for proto in base.CAPABILITIES:
        for name, member in _members(proto).items():
            if not callable(member) or not hasattr(driver, name):
                continue
            checked += 1
            assert _params(getattr(driver, name)) == _params(member), f"{driver.__name__}.{name} vs {proto.__name__}"
    assert checked, f"{driver.__name__} declares no optional capability at all"


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.__name__)
def test_every_public_method_is_required_or_a_declared_capability(driver):
    declared = REQUIRED | {n for p in base.CAPABILITIES for n in _members(p)}
    # The driver's own entry points, which no code outside its package calls (its CLI commands,
    # tests' hooks); checked by grep when this list was written.
    own = {"ProxmoxDriver": {"preflight", "place", "capacities", "needs_template", "node_of", "templates"},
           "LxcDriver": {"down", "ensure_network", "ensure_template", "info", "service_outcomes", "sh",
                         "unavailable_packages"},
           "FakeDriver": {"exec_log", "set_usage"}}[driver.__name__]
    public = {n for n, v in vars(driver).items() if not n.startswith("_") and callable(v)}
    unknown = public - declared - own
    assert not unknown, f"{driver.__name__} has methods drivers/base.py does not declare: {sorted(unknown)}"


def test_capabilities_of_the_fake_driver(tmp_path):
    got = base.capabilities(FakeDriver(tmp_path))
    assert {"Archives", "ReportsUsage", "ServiceUrls", "HasTraefikTarget"} <= set(got)
    assert "ChecksPlans" not in got  # the fake accepts every plan


# What each driver offers, as the engine sees it: it asks `isinstance(driver, base.<Protocol>)`
# (engine/api.py, engine/steps.py). Written down by hand from the driver classes.
OFFERS = {
    FakeDriver: {"Archives", "HasTraefikTarget", "ReportsUsage", "ServiceUrls"},
    LxcDriver: {"Archives", "BindsControlPlane", "BindsSecrets", "ChecksPlans", "ConfiguresServices",
                "HasTraefikTarget", "ManagesNetwork", "NotesHost", "AuditsHost", "AuditsNetwork", "HostLocal",
                "ReadsLimits", "ReportsUsage", "RunsNativeApps",
                "SkipsCompose", "SkipsServices"},
    ProxmoxDriver: {"AppliesFirewall", "Archives", "ChecksPlans", "Closes", "DiffsFirewall", "ReportsUsage",
                    "TakesNotes"},
}


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.__name__)
def test_the_engine_sees_each_drivers_capabilities(driver):
    bare = object.__new__(driver)  # the class's members only: no host, API or directory touched
    assert isinstance(bare, base.ComputeDriver)
    assert set(base.capabilities(bare)) == OFFERS[driver]


def test_a_member_set_to_none_is_no_capability(tmp_path):
    class NoArchive(FakeDriver):
        archive = None  # the engine then refuses deletes without --purge

    assert "Archives" in base.capabilities(FakeDriver(tmp_path))
    assert "Archives" not in base.capabilities(NoArchive(tmp_path))
