"""The engine (`aicommons.engine.api.apply_site`) driving ProxmoxDriver on the simulated cluster.

Real: the engine, state store, renderer, Traefik file target (a temp dir), proxmoxer over HTTPS,
paramiko SSH. Simulated: Proxmox VE (tests/pvesim). Tenancy back ends are left out (none given).
"""

from __future__ import annotations

import yaml

from aicommons.engine import addresses as A
from aicommons.engine.api import apply_site, plan_site
from aicommons.engine.targets import LocalDirTarget
from tests.test_proxmox_driver import driver_of, new_sim


def test_apply_site_creates_then_is_idempotent_and_sees_drift(tmp_path):
    sim = new_sim()
    try:
        data = yaml.safe_load(sim.site_yaml(3))
        data["services"] = {"postgres": {}, "redis": {}, "qdrant": {}, "ollama": {}, "garage": {}, "searxng": {}}
        site_file = tmp_path / "site.yml"
        site_file.write_text(yaml.safe_dump(data, sort_keys=False))
        from aicommons.spec.load import load_site

        site, _ = load_site(site_file)
        target = LocalDirTarget(tmp_path / "traefik")
        kw = dict(driver=driver_of(sim, site), backends=[], target=target)

        first = apply_site(site_file, **kw)
        assert first.ok, [(o.step, o.detail) for o in first.errors]
        assert {c.ctid for c in first.plan.resolved.containers} <= set(sim.cluster.cts)
        assert all(sim.cluster.cts[c.ctid].status == "running" for c in first.plan.resolved.containers)
        assert any(r.argv[:2] == ["docker", "compose"] and r.argv[-3:] == ["up", "-d", "--remove-orphans"]
                   for r in sim.records)  # the engine's bundle step ran over our SSH transport

        sim.reset_counts()
        again = plan_site(site_file, **kw)
        assert again.empty, again.counts()
        assert apply_site(site_file, **kw).ok and sim.writes() == 0

        with sim.cluster.lock:  # memory changed by hand
            sim.cluster.cts[200].conf["memory"] = "2048"
        drift = plan_site(site_file, **kw)
        assert [(c.address, c.action) for c in drift.changes if c.action != "no-op"] == [(A.container(200), "update")]
        assert apply_site(site_file, **kw).ok
        assert sim.cluster.cts[200].conf["memory"] == "8192"
    finally:
        sim.close()
