"""Monitoring configuration rendered from the resolved site (pure: no I/O, no secrets).

Files (paths relative to the render root):
  monitoring/prometheus/prometheus.yml           scrape configs for every container and service
  monitoring/prometheus/rules/aicommons.yml      alert rules
  monitoring/grafana/provisioning/datasources/aicommons.yml
  monitoring/grafana/provisioning/dashboards/aicommons.yml
  monitoring/grafana/dashboards/site.json, user.json (one dashboard, a `user` variable)
  monitoring/grafana/dashboards/models.json      model use through the gateway (with the gateway)
  monitoring/loki/loki.yml                       monolithic Loki, filesystem storage
  monitoring/alloy/config.alloy                  log shipper for every container (Alloy:
                                                 Promtail reached end of life in 2026)

Secrets are referenced by file (`secrets/qdrant_api_key`, beside prometheus.yml), never inlined.
"""

from __future__ import annotations

import json

from aicommons.plan.model import Container, ResolvedSite
from aicommons.render.files import RenderedFile

ROOT = "monitoring"
NODE_EXPORTER_PORT = 9100
CADVISOR_PORT = 9280  # cAdvisor's default 8080 is Open WebUI's port on user containers
POSTGRES_EXPORTER_PORT = 9187
REDIS_EXPORTER_PORT = 9121
LOKI_PORT = 3100
# Debian's prometheus-node-exporter reads *.prom files from here (--collector.textfile.directory).
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
BACKUP_METRIC = "aicommons_backup_last_success_timestamp_seconds"
BACKUP_MAX_AGE_H = 26
DISK_MAX_USED = 0.85
DASHBOARD_DIR = "/var/lib/grafana/dashboards/aicommons"


def _yaml(data) -> str:
    # safe_dump's text through libyaml and render's memo (pure-Python safe_dump was most of a render)
    from aicommons.render.common import FastDumper, memo_dump

    return memo_dump(data, FastDumper, sort_keys=False, default_flow_style=False)


def _labels(c: Container) -> dict[str, str]:
    out = {"container": c.hostname, "ctid": str(c.ctid), "role": c.role, "phase": str(c.phase)}
    if c.role == "user":
        out["user"] = c.name
    else:
        out["service"] = c.name
    return out


def _endpoint(resolved: ResolvedSite, service: str, port: str) -> str | None:
    ep = resolved.endpoints.get(service)
    if ep is None or port not in ep.ports:
        return None
    return f"{ep.host}:{ep.ports[port]}"


def _static(targets: list[str], labels: dict[str, str]) -> dict:
    return {"targets": targets, "labels": labels}


def scrape_configs(resolved: ResolvedSite, control_host: str) -> list[dict]:
    site = resolved.site.name
    jobs: list[dict] = [
        {"job_name": "node", "static_configs": [
            _static([f"{c.ip}:{NODE_EXPORTER_PORT}"], _labels(c)) for c in resolved.containers]},
        {"job_name": "cadvisor", "static_configs": [
            _static([f"{c.ip}:{CADVISOR_PORT}"], _labels(c)) for c in resolved.containers if c.role == "user"]},
        # Where `aicommons backup run` runs: its node exporter serves the backup textfile metric.
        {"job_name": "aicommons-control", "static_configs": [_static([control_host], {"role": "control"})]},
    ]
    exporters = [("postgres", "postgres", "postgres", POSTGRES_EXPORTER_PORT),
                 ("redis", "redis", "redis", REDIS_EXPORTER_PORT)]
    for job, service, _port, exporter_port in exporters:
        ep = resolved.endpoints.get(service)
        if ep is not None and not ep.external:
            jobs.append({"job_name": job, "static_configs": [
                _static([f"{ep.host}:{exporter_port}"], {"service": service, "phase": "1"})]})
    qdrant = _endpoint(resolved, "qdrant", "http")
    if qdrant:
        jobs.append({"job_name": "qdrant", "metrics_path": "/metrics",
                     # relative to prometheus.yml; written 0600 by whoever deploys the config
                     "authorization": {"type": "Bearer", "credentials_file": "secrets/qdrant_api_key"},
                     "static_configs": [_static([qdrant], {"service": "qdrant", "phase": "1"})]})
    gateway = _endpoint(resolved, "gateway", "http")
    if gateway:  # per person x model x app counters, read by the gateway from its usage table
        jobs.append({"job_name": "gateway", "metrics_path": "/metrics",
                     "static_configs": [_static([gateway], {"service": "gateway", "phase": "2"})]})
    # Traefik serves /metrics on its API entryPoint (metrics.prometheus in traefik.yml).
    jobs.append({"job_name": "traefik", "static_configs": [
        _static([f"{resolved.proxy_ip}:8080"], {"service": "traefik", "phase": "1"})]})
    for job, service, port in (("prometheus", "prometheus", "http"), ("loki", "loki", "http"),
                               ("grafana", "grafana", "http")):
        target = _endpoint(resolved, service, port)
        if target:
            jobs.append({"job_name": job, "static_configs": [_static([target], {"service": service})]})
    for entry in jobs:
        entry.setdefault("scrape_interval", "30s")
        entry["static_configs"] = [s for s in entry["static_configs"] if s["targets"]]
        for s in entry["static_configs"]:
            s["labels"] = {"site": site, **s["labels"]}
    return [j for j in jobs if j["static_configs"]]


def prometheus_config(resolved: ResolvedSite, control_host: str) -> dict:
    return {
        "global": {"scrape_interval": "30s", "evaluation_interval": "30s",
                   "external_labels": {"site": resolved.site.name}},
        "rule_files": ["rules/*.yml"],
        "scrape_configs": scrape_configs(resolved, control_host),
    }


def alert_rules() -> dict:
    h = BACKUP_MAX_AGE_H
    return {"groups": [{
        "name": "aicommons",
        "rules": [
            {"alert": "CriticalServiceDown", "expr": 'up{phase="1"} == 0', "for": "2m",
             "labels": {"severity": "critical"},
             "annotations": {"summary": "{{ $labels.job }} on {{ $labels.instance }} is down (phase 1: the site is critical)"}},
            {"alert": "ServiceDown", "expr": 'up{phase!="1"} == 0', "for": "5m",
             "labels": {"severity": "warning"},
             "annotations": {"summary": "{{ $labels.job }} on {{ $labels.instance }} is down"}},
            {"alert": "DiskAlmostFull",
             "expr": ('1 - node_filesystem_avail_bytes{fstype!~"tmpfs|overlay|squashfs"}'
                      f' / node_filesystem_size_bytes{{fstype!~"tmpfs|overlay|squashfs"}} > {DISK_MAX_USED}'),
             "for": "10m", "labels": {"severity": "warning"},
             "annotations": {"summary": "{{ $labels.container }} {{ $labels.mountpoint }} is {{ $value | humanizePercentage }} full"}},
            {"alert": "BackupTooOld", "expr": f"time() - max({BACKUP_METRIC}) > {h} * 3600",
             "for": "5m", "labels": {"severity": "critical"},
             "annotations": {"summary": f"the last good backup is older than {h} h"}},
            {"alert": "BackupMissing", "expr": f"absent({BACKUP_METRIC})", "for": f"{h}h",
             "labels": {"severity": "critical"},
             "annotations": {"summary": "no backup has ever reported success"}},
            {"alert": "UserContainerOOM",
             "expr": 'increase(container_oom_events_total{role="user"}[10m]) > 0 '
                     'or increase(node_vmstat_oom_kill{role="user"}[10m]) > 0',
             "labels": {"severity": "warning"},
             "annotations": {"summary": "a process of user {{ $labels.user }} was killed for lack of memory"}},
        ],
    }]}


def datasources(resolved: ResolvedSite) -> dict:
    out = []
    prom = _endpoint(resolved, "prometheus", "http")
    if prom:
        out.append({"name": "Prometheus", "uid": "prometheus", "type": "prometheus", "access": "proxy",
                    "url": f"http://{prom}", "isDefault": True})
    loki = _endpoint(resolved, "loki", "http")
    if loki:
        out.append({"name": "Loki", "uid": "loki", "type": "loki", "access": "proxy", "url": f"http://{loki}"})
    return {"apiVersion": 1, "datasources": out}


def _panel(pid: int, title: str, expr: str, y: int, x: int = 0, kind: str = "timeseries",
           unit: str = "short", ds: str = "prometheus") -> dict:
    target = {"refId": "A", "expr": expr, "datasource": {"type": ds, "uid": ds}}
    return {"id": pid, "type": kind, "title": title, "datasource": {"type": ds, "uid": ds},
            "gridPos": {"x": x, "y": y, "w": 12, "h": 8}, "targets": [target],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}}


def _dashboard(uid: str, title: str, panels: list[dict], variables: list[dict]) -> dict:
    return {"uid": uid, "title": title, "tags": ["aicommons"], "schemaVersion": 39, "editable": False,
            "time": {"from": "now-6h", "to": "now"}, "refresh": "1m",
            "templating": {"list": variables}, "panels": panels}


def site_dashboard(resolved: ResolvedSite) -> dict:
    panels = [
        _panel(1, "Targets down", 'count(up == 0) or vector(0)', 0, kind="stat"),
        _panel(2, "Hours since last good backup", f"(time() - max({BACKUP_METRIC})) / 3600", 0, 12,
               kind="stat", unit="h"),
        _panel(3, "Service up (phase 1-2)", 'up{role!="user"}', 8),
        _panel(4, "Disk used", '1 - node_filesystem_avail_bytes{mountpoint="/"} / '
               'node_filesystem_size_bytes{mountpoint="/"}', 8, 12, unit="percentunit"),
        _panel(5, "Memory used per container", 'node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes',
               16, unit="bytes"),
        _panel(6, "Traefik requests per second", 'sum by (service) (rate(traefik_service_requests_total[5m]))', 16, 12),
    ]
    return _dashboard(f"aic-site-{resolved.site.name}"[:40], f"{resolved.site.name}: site", panels, [])


def user_dashboard(resolved: ResolvedSite) -> dict:
    users = [t.user for t in resolved.tenants]
    var = {"name": "user", "type": "custom", "label": "User", "query": ",".join(users),
           "current": {"text": users[0], "value": users[0]} if users else {},
           "options": [{"text": u, "value": u, "selected": i == 0} for i, u in enumerate(users)]}
    panels = [
        _panel(1, "CPU per app", 'sum by (name) (rate(container_cpu_usage_seconds_total{user="$user",name!=""}[5m]))', 0),
        _panel(2, "Memory per app", 'sum by (name) (container_memory_working_set_bytes{user="$user",name!=""})',
               0, 12, unit="bytes"),
        _panel(3, "Out-of-memory kills", 'sum(increase(container_oom_events_total{user="$user"}[1h]))', 8, kind="stat"),
        _panel(4, "Disk used", '1 - node_filesystem_avail_bytes{user="$user",mountpoint="/"} / '
               'node_filesystem_size_bytes{user="$user",mountpoint="/"}', 8, 12, unit="percentunit"),
        _panel(5, "Logs", '{host="user-$user"}', 16, kind="logs", ds="loki"),
    ]
    return _dashboard(f"aic-user-{resolved.site.name}"[:40], f"{resolved.site.name}: user", panels, [var])


def models_dashboard(resolved: ResolvedSite) -> dict:
    """Model use through the gateway (aicommons_gateway_* series, gateway/metrics.py): per person,
    model and app; a `user` variable narrows every panel."""
    users = [t.user for t in resolved.tenants if t.gateway]
    var = {"name": "user", "type": "custom", "label": "User", "includeAll": True, "multi": True,
           "allValue": ".*", "query": ",".join(users), "current": {"text": "All", "value": ["$__all"]},
           "options": [{"text": "All", "value": "$__all", "selected": True}]
           + [{"text": u, "value": u, "selected": False} for u in users]}
    sel = 'user=~"$user"'
    tokens = f"aicommons_gateway_prompt_tokens_total{{{sel}}} + aicommons_gateway_completion_tokens_total{{{sel}}}"
    panels = [
        _panel(1, "Tokens per hour, by person", f"sum by (user) (increase(({tokens})[1h:]))", 0),
        _panel(2, "Tokens per hour, by model", f"sum by (model) (increase(({tokens})[1h:]))", 0, 12),
        _panel(3, "Tokens per hour, by app", f"sum by (app) (increase(({tokens})[1h:]))", 8),
        _panel(4, "Cost per day, by person", f"sum by (user) (increase(aicommons_gateway_cost_total{{{sel}}}[1d]))",
               8, 12),
        _panel(5, "Tokens in the current budget window", f'sum by (user) (aicommons_gateway_window_tokens{{{sel}}})',
               16, kind="bargauge"),
        _panel(6, "Requests refused (bad key, budget)", "sum by (reason) (rate(aicommons_gateway_rejected_total[5m]))",
               16, 12),
        _panel(7, "Requests per second, by model",
               f"sum by (model) (rate(aicommons_gateway_requests_total{{{sel}}}[5m]))", 24),
        _panel(8, "Requests without reported usage", f"sum(aicommons_gateway_unmetered_requests_total{{{sel}}})",
               24, 12, kind="stat"),
    ]
    return _dashboard(f"aic-models-{resolved.site.name}"[:40], f"{resolved.site.name}: models", panels, [var])


def loki_config() -> dict:
    return {
        "auth_enabled": False,
        "server": {"http_listen_port": LOKI_PORT},
        "common": {"path_prefix": "/var/lib/loki", "replication_factor": 1,
                   "ring": {"kvstore": {"store": "inmemory"}},
                   "storage": {"filesystem": {"chunks_directory": "/var/lib/loki/chunks",
                                              "rules_directory": "/var/lib/loki/rules"}}},
        "schema_config": {"configs": [{"from": "2026-01-01", "store": "tsdb", "object_store": "filesystem",
                                       "schema": "v13", "index": {"prefix": "index_", "period": "24h"}}]},
        "limits_config": {"retention_period": "744h"},
        "compactor": {"working_directory": "/var/lib/loki/compactor", "retention_enabled": True,
                      "delete_request_store": "filesystem"},
    }


def alloy_config(resolved: ResolvedSite) -> str:
    loki = _endpoint(resolved, "loki", "http") or f"loki.invalid:{LOKI_PORT}"
    # One file for every container: `host` is the container's hostname (user-<name> on user
    # containers), which is what the per-user dashboard filters on.
    return f"""// Rendered by aicommons: ships Docker and journald logs of this container to Loki.
loki.write "site" {{
  endpoint {{
    url = "http://{loki}/loki/api/v1/push"
  }}
  external_labels = {{site = {json.dumps(resolved.site.name)}, host = constants.hostname}}
}}

discovery.docker "local" {{
  host = "unix:///var/run/docker.sock"
}}

discovery.relabel "docker" {{
  targets = discovery.docker.local.targets
  rule {{
    source_labels = ["__meta_docker_container_name"]
    regex         = "/(.*)"
    target_label  = "app"
  }}
}}

loki.source.docker "apps" {{
  host       = "unix:///var/run/docker.sock"
  targets    = discovery.relabel.docker.output
  forward_to = [loki.write.site.receiver]
}}

loki.relabel "journal" {{
  forward_to = []
  rule {{
    source_labels = ["__journal__systemd_unit"]
    target_label  = "unit"
  }}
}}

loki.source.journal "system" {{
  forward_to    = [loki.write.site.receiver]
  relabel_rules = loki.relabel.journal.rules
  labels        = {{job = "journal"}}
}}
"""


def render_monitoring(resolved: ResolvedSite, control_host: str = "127.0.0.1:9100") -> dict[str, RenderedFile]:
    """Every monitoring file of the site. `control_host`: host:port of the node exporter where
    backups run (its textfile collector carries the last-good-backup metric)."""
    files = {
        "prometheus/prometheus.yml": _yaml(prometheus_config(resolved, control_host)),
        "prometheus/rules/aicommons.yml": _yaml(alert_rules()),
        "grafana/provisioning/datasources/aicommons.yml": _yaml(datasources(resolved)),
        "grafana/provisioning/dashboards/aicommons.yml": _yaml({"apiVersion": 1, "providers": [{
            "name": "aicommons", "type": "file", "disableDeletion": True, "allowUiUpdates": False,
            "options": {"path": DASHBOARD_DIR}}]}),
        "grafana/dashboards/site.json": json.dumps(site_dashboard(resolved), indent=2) + "\n",
        "grafana/dashboards/user.json": json.dumps(user_dashboard(resolved), indent=2) + "\n",
        **({"grafana/dashboards/models.json": json.dumps(models_dashboard(resolved), indent=2) + "\n"}
           if "gateway" in resolved.endpoints else {}),
        "loki/loki.yml": _yaml(loki_config()),
        "alloy/config.alloy": alloy_config(resolved),
    }
    return {f"{ROOT}/{p}": RenderedFile(path=f"{ROOT}/{p}", content=c, mode=0o644) for p, c in files.items()}
