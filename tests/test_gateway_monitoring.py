"""The gateway in the site's monitoring: Prometheus scrapes it (real `promtool check config`),
the models dashboard is well-formed Grafana JSON whose every query is valid PromQL (each one
checked by real `promtool check rules` as a recording rule). Nothing simulated; no Grafana here."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from aicommons.plan.resolve import resolve
from aicommons.render.monitoring import render_monitoring
from aicommons.spec.load import load_text

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: scripts/install.sh --test installs prometheus")

SITE = """version: 1
name: gwmon
domain: example.org
driver: {kind: lxc}
services: {postgres: {}, gateway: {}, prometheus: {}, grafana: {}, ollama: {}}
user_template: {apps: [jupyter]}
gateway:
  upstreams: [{url: "http://10.0.5.100:8080/v1", models: [smollm2]}]
users: [{name: alice, email: alice@example.org}, {name: bob, email: bob@example.org}]
"""


@pytest.fixture(scope="module")
def files():
    site, _ = load_text(SITE)
    r = resolve(site)
    return r, {k.removeprefix("monitoring/"): v.content for k, v in render_monitoring(r).items()}


@needs_promtool
def test_prometheus_scrapes_the_gateway(files, tmp_path):
    r, f = files
    cfg = yaml.safe_load(f["prometheus/prometheus.yml"])
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "gateway")
    ep = r.endpoints["gateway"]
    assert job["static_configs"][0]["targets"] == [f"{ep.host}:{ep.ports['http']}"]
    (tmp_path / "rules").mkdir()
    (tmp_path / "prometheus.yml").write_text(f["prometheus/prometheus.yml"])
    (tmp_path / "rules/aicommons.yml").write_text(f["prometheus/rules/aicommons.yml"])
    out = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_models_dashboard_is_valid(files, tmp_path):
    r, f = files
    d = json.loads(f["grafana/dashboards/models.json"])
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['id']} overlaps another"
        cells |= mine
        assert p["datasource"]["uid"] == "prometheus" and p["targets"][0]["expr"]
    var = d["templating"]["list"][0]
    assert var["name"] == "user" and [o["value"] for o in var["options"]][1:] == ["alice", "bob"]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel{p['id']}", "expr": p["targets"][0]["expr"].replace("$user", ".*")}
        for p in d["panels"]]}]}
    (tmp_path / "d.yml").write_text(yaml.safe_dump(rules))
    out = subprocess.run([PROMTOOL, "check", "rules", "d.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_gateway_no_models_dashboard():
    site, _ = load_text(SITE.replace("gateway: {}, ", ""))
    files = render_monitoring(resolve(site))
    assert "monitoring/grafana/dashboards/models.json" not in files
    assert "job_name: gateway" not in files["monitoring/prometheus/prometheus.yml"].content
