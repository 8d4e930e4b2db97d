"""Monitoring render: real `promtool` (Debian's prometheus package) checks the rendered Prometheus
config and rules, and `promtool test rules` feeds synthetic series to prove each alert fires.
Nothing is simulated; Grafana/Loki/Alloy files are checked for shape (no binaries here)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aicommons.plan.resolve import resolve
from aicommons.render.monitoring import BACKUP_METRIC, render_monitoring
from aicommons.spec.load import load_text

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: scripts/install.sh --test installs prometheus")


@pytest.fixture(scope="module")
def resolved(seed_site_text_module):
    site, _ = load_text(seed_site_text_module)
    return resolve(site)


@pytest.fixture(scope="module")
def seed_site_text_module():
    from aicommons.spec.default import render_site_yaml

    return render_site_yaml(users=50)


@pytest.fixture(scope="module")
def tree(resolved, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mon")
    for rel, f in render_monitoring(resolved).items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f.content)
    secret = out / "monitoring/prometheus/secrets/qdrant_api_key"
    secret.parent.mkdir(parents=True)
    secret.write_text("not-a-real-key\n")
    return out / "monitoring"


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_accepts_config_and_rules(tree):
    r = _promtool("check", "config", "prometheus.yml", cwd=tree / "prometheus")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rules found" not in r.stdout  # every rule file is loaded, not only one rule
    r = _promtool("check", "rules", "rules/aicommons.yml", cwd=tree / "prometheus")
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_rejects_a_broken_rule(tree, tmp_path):
    rules = yaml.safe_load((tree / "prometheus/rules/aicommons.yml").read_text())
    rules["groups"][0]["rules"][0]["expr"] = "up{phase= == 0"
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(rules))
    assert _promtool("check", "rules", "bad.yml", cwd=tmp_path).returncode != 0


def test_scrape_targets_cover_every_container(resolved, tree):
    cfg = yaml.safe_load((tree / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    node = {t for s in jobs["node"]["static_configs"] for t in s["targets"]}
    assert node == {f"{c.ip}:9100" for c in resolved.containers}
    cad = jobs["cadvisor"]["static_configs"]
    assert {s["labels"]["user"] for s in cad} == {t.user for t in resolved.tenants}
    for job in ("postgres", "redis", "qdrant", "traefik", "aicommons-control"):
        assert job in jobs
    assert jobs["postgres"]["static_configs"][0]["targets"] == [f"{resolved.endpoints['postgres'].host}:9187"]


ALERT_TESTS = f"""
rule_files: [rules/aicommons.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{{job="redis",instance="10.0.5.103:9121",phase="1"}}'
        values: '0x10'
      - series: 'up{{job="node",instance="10.0.5.105:9100",phase="2"}}'
        values: '1x10'
      - series: 'node_filesystem_avail_bytes{{container="user-user1",mountpoint="/",fstype="ext4"}}'
        values: '10x20'
      - series: 'node_filesystem_size_bytes{{container="user-user1",mountpoint="/",fstype="ext4"}}'
        values: '100x20'
      - series: '{BACKUP_METRIC}{{site="s"}}'
        values: '0x20'
      - series: 'container_oom_events_total{{role="user",user="user2",name="openwebui"}}'
        values: '0 0 1 1 1'
    alert_rule_test:
      - eval_time: 5m
        alertname: CriticalServiceDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: redis, instance: "10.0.5.103:9121", phase: "1"}}
            exp_annotations: {{summary: "redis on 10.0.5.103:9121 is down (phase 1: the site is critical)"}}
      - eval_time: 5m
        alertname: ServiceDown
        exp_alerts: []
      - eval_time: 15m
        alertname: DiskAlmostFull
        exp_alerts:
          - exp_labels: {{severity: warning, container: user-user1, mountpoint: /, fstype: ext4}}
            exp_annotations: {{summary: "user-user1 / is 90% full"}}
      - eval_time: 3m
        alertname: UserContainerOOM
        exp_alerts:
          - exp_labels: {{severity: warning, role: user, user: user2, name: openwebui}}
            exp_annotations: {{summary: "a process of user user2 was killed for lack of memory"}}
  - interval: 4m  # inside Prometheus's 5 m lookback, so the series never goes stale
    input_series:
      - series: '{BACKUP_METRIC}{{site="s"}}'
        values: '0x450'
    alert_rule_test:
      - eval_time: 20h
        alertname: BackupTooOld
        exp_alerts: []
      - eval_time: 28h
        alertname: BackupTooOld
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations: {{summary: "the last good backup is older than 26 h"}}
"""


@needs_promtool
def test_alerts_fire_on_synthetic_series(tree):
    (tree / "prometheus/alerts_test.yml").write_text(ALERT_TESTS)
    r = _promtool("test", "rules", "alerts_test.yml", cwd=tree / "prometheus")
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_provisioning(resolved, tree):
    ds = yaml.safe_load((tree / "grafana/provisioning/datasources/aicommons.yml").read_text())
    urls = {d["type"]: d["url"] for d in ds["datasources"]}
    assert urls["prometheus"] == f"http://{resolved.endpoints['prometheus'].host}:9090"
    assert urls["loki"] == f"http://{resolved.endpoints['loki'].host}:3100"
    site = json.loads((tree / "grafana/dashboards/site.json").read_text())
    user = json.loads((tree / "grafana/dashboards/user.json").read_text())
    assert site["uid"] != user["uid"] and site["panels"]
    var = user["templating"]["list"][0]
    assert var["name"] == "user" and len(var["options"]) == len(resolved.tenants)
    assert all("$user" in p["targets"][0]["expr"] for p in user["panels"])


def test_loki_and_shipper(resolved, tree):
    loki = yaml.safe_load((tree / "loki/loki.yml").read_text())
    assert loki["schema_config"]["configs"][0]["schema"] == "v13"
    alloy = (tree / "alloy/config.alloy").read_text()
    assert f"http://{resolved.endpoints['loki'].host}:3100/loki/api/v1/push" in alloy
    assert alloy.count("{") == alloy.count("}")


def test_render_is_pure_and_stable(resolved):
    assert render_monitoring(resolved) == render_monitoring(resolved)
